"""CLI: ``interp knockout`` and ``interp contributions`` (stable JSON under ``--out DIR``).

``interp knockout`` writes ``DIR/knockout.json`` (``tokens``, ``subject_range``, ``p_clean``,
``p_knockout`` per source set as a list over centre layers, ``relative_change``, ``rank_knockout``
…) and the Geva-style figure; with ``--dataset PATH`` it sweeps the facts the model knows and
writes ``DIR/knockout_sweep.json`` (mean and standard error per set per layer) plus the resumable
``DIR/sweep/items.jsonl``; ``--from-log DIR/sweep`` draws the same from that log (also a running
sweep's) without the model, with per-cell bootstrap CIs and corrected p-values
(``--mask-nonsignificant`` hides the other layers).  ``interp contributions`` writes ``DIR/contributions.json`` and the
layer × token and head × layer heatmaps.

``--context TEXT``: when TEXT is not already part of ``--prompt``, the prompt becomes the RAG
prompt (:func:`interp.prompts.rag_prompt`: context first, then the prompt as the question), and
the named set ``context`` becomes available.
"""

from __future__ import annotations


def _prompt_and_context(args) -> tuple[str, str | None, int]:
    from ..prompts import rag_prompt
    if args.context and args.context.strip() not in args.prompt:
        return rag_prompt(args.prompt, args.context).text, args.context.strip(), -1
    return args.prompt, (args.context.strip() if args.context else None), 0


def _cmd_knockout(args) -> dict:
    from ..clitools import load_model, out_dir, save_result, save_sweep_result
    from ..errors import PromptError
    from .knockout import attention_knockout, knockout_sweep, knockout_sweep_from_log
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if args.dataset or args.from_log:
        out = out_dir(args, "knockout")
        if args.from_log:
            res = knockout_sweep_from_log(args.from_log, min_p_clean=args.min_p_clean)
        else:
            res = knockout_sweep(load_model(args), args.dataset, out / "sweep", sources=sources, window=args.window,
                                 n_facts=args.n_facts, max_scan=args.max_scan, require_known=not args.all_facts,
                                 bos=args.bos, min_p_clean=args.min_p_clean, progress=not args.json)
        paths = save_sweep_result(res, "knockout_sweep", args, "knockout")
        if not args.json:
            for s in res.sources:
                i = min(range(len(res.layers)), key=res.mean[s].__getitem__)
                print(f"{s:12s} strongest drop {100 * res.mean[s][i]:+.1f}% ± {100 * res.sem[s][i]:.1f} "
                      f"at layer {res.layers[i]}  (n={res.n_known})")
            if res.errors:
                print(f"{len(res.errors)} fact(s) failed (listed in knockout_sweep.json)")
        return {"n_known": res.n_known, "n_scanned": res.n_scanned, "window": res.window,
                "layers": res.layers, "mean": res.mean, "sem": res.sem, "n_errors": len(res.errors),
                "errors": res.errors[:20], "bos": res.bos, "n_position_zero": res.n_position_zero,
                "n_unknown_target": res.n_unknown_target, "files": paths}
    if not args.prompt:
        raise PromptError("give --prompt (and --subject), or --dataset PATH for a sweep")
    model = load_model(args)
    prompt, context, occ = _prompt_and_context(args)
    res = attention_knockout(model, prompt, sources, target=args.target, window=args.window,
                             layers=args.layers, heads=args.heads, subject=args.subject,
                             context=context, answer=args.answer, subject_occurrence=occ, bos=args.bos,
                             min_p_clean=args.min_p_clean)
    paths = save_result(res, "knockout", args, "knockout")
    if not args.json:
        print(f"p_clean({res.answer!r}) = {res.p_clean:.4f}, window {res.window}")
        for s, (layer, rel) in res.strongest_drops().items():
            print(f"{s:12s} strongest drop {100 * rel:+.1f}% at layer {layer}")
    return {"prompt": res.prompt, "tokens": res.tokens, "subject_range": res.subject_range,
            "context_range": res.context_range, "target": res.target, "answer": res.answer,
            "p_clean": res.p_clean, "window": res.window, "layers": res.layers,
            "p_knockout": res.p_knockout, "relative_change": res.relative_change, "bos": res.bos,
            "position_zero": res.position_zero, "unknown_target": res.unknown_target, "files": paths}


def _cmd_contributions(args) -> dict:
    from ..clitools import load_model, out_dir
    from ..figures import save_figure
    from .contributions import attention_contributions
    model = load_model(args)
    prompt, context, occ = _prompt_and_context(args)
    res = attention_contributions(model, prompt, target=args.target, subject=args.subject,
                                  context=context, answer=args.answer, subject_occurrence=occ)
    out = out_dir(args, "contributions")
    paths = {"result": str(res.save(out)),
             "figure_tokens": save_figure(res.figure("tokens"), out, "contributions_tokens"),
             "figure_heads": save_figure(res.figure("heads", args.group), out, "contributions_heads")}
    per_group = {g: res.group_norm[:, i].tolist() for i, g in enumerate(res.group_names)}
    if not args.json:
        for g, v in per_group.items():
            i = max(range(len(v)), key=v.__getitem__)
            print(f"{g:8s} max contribution {v[i]:.3f} at layer {res.layers[i]}, sum {sum(v):.2f}")
    return {"prompt": res.prompt, "tokens": res.tokens, "target": res.target, "answer": res.answer,
            "groups": res.groups, "group_norm": per_group,
            "dla_top_heads": _top_heads(res), "files": paths}


def _top_heads(res, k: int = 5) -> list[dict]:
    flat = res.dla.flatten()
    idx = flat.abs().argsort(descending=True)[:k].tolist()
    H = res.dla.shape[1]
    return [{"layer": res.layers[i // H], "head": i % H, "dla": float(flat[i])} for i in idx]


def register(sub, common) -> None:
    """Add ``interp knockout`` and ``interp contributions`` to the command line."""
    from ..clitools import add_from_log_args, add_index_arg, add_target_check_args
    p = sub.add_parser("knockout", parents=[common],
                       help="attention knockout target→sources over layer windows (Geva et al. 2023)")
    p.add_argument("--prompt", default=None)
    p.add_argument("--subject", default=None, help="subject text as it occurs in the prompt")
    p.add_argument("--sources", default="subject,non_subject,last",
                   help="comma-separated sets: subject, non_subject, last, context, non_context")
    p.add_argument("--window", type=int, default=None, help="layers per window (default ≈ n_layers/5, odd)")
    p.add_argument("--context", default=None,
                   help="retrieved passage; prepended in the RAG template unless already in --prompt")
    p.add_argument("--target", type=int, default=-1, help="query position whose edges are cut")
    p.add_argument("--answer", default=None, help="token to track (default: clean top-1)")
    add_index_arg(p, "--layers", "layer", "centre layers of the windows")
    add_index_arg(p, "--heads", "head", "heads whose edges are blocked")
    p.add_argument("--dataset", default=None, help="known_1000-style file: sweep the facts the model knows")
    p.add_argument("--n-facts", type=int, default=40, help="known facts to sweep with --dataset")
    p.add_argument("--max-scan", type=int, default=None, help="scan at most this many dataset rows")
    p.add_argument("--all-facts", action="store_true",
                   help="with --dataset: sweep every fact, not only those the model gets right")
    add_from_log_args(p, "a knockout sweep's log directory (--out DIR of a --dataset run: DIR/sweep)")
    add_target_check_args(p, bos=True)
    p.set_defaults(func=_cmd_knockout)
    p = sub.add_parser("contributions", parents=[common],
                       help="per-head, per-source-token attention contributions to the last token")
    p.add_argument("--prompt", required=True)
    p.add_argument("--subject", default=None)
    p.add_argument("--context", default=None,
                   help="retrieved passage; prepended in the RAG template unless already in --prompt")
    p.add_argument("--target", type=int, default=-1)
    p.add_argument("--answer", default=None, help="token for direct logit attribution (default top-1)")
    p.add_argument("--group", default=None, help="group of the head × layer heatmap (default subject)")
    p.set_defaults(func=_cmd_contributions)

