"""``interp trace`` (causal tracing of one prompt or a dataset) and ``interp patch`` (activation patching).

Stable JSON for scripts: ``interp trace ... --out DIR`` writes ``DIR/trace.json`` (``tokens``,
``subject_range`` [start, end), ``p_clean``, ``p_corrupt``, ``p_restored[kind]`` as
[layers][tokens], ``indirect_effect``, ``settings``, ``seed``) and the ROME-style heatmaps
``DIR/trace.{html,png,pdf}``; ``--dataset PATH`` writes ``DIR/trace_sweep.json`` (+ the
resumable ``items.jsonl``) and ``DIR/trace_sweep.*``; ``--from-log SWEEPDIR`` draws the same from
a sweep's log (also a running one) without the model, with per-cell bootstrap CIs and corrected
p-values (``--mask-nonsignificant`` blanks the other cells).  ``interp patch`` writes
``DIR/patching.json`` and, with ``--atp``, ``DIR/attribution.json`` plus the Spearman
correlation in the summary; ``--atp-star`` adds AtP* (QK fix + GradDrop, Kramár et al. 2024) in
``DIR/atp_star/attribution.json`` with the Spearman correlation of ``|AtP*|`` and ``|effect|``.
"""

from __future__ import annotations

from ..clitools import (add_from_log_args, add_index_arg, add_target_check_args, load_model, out_dir, probability,
                        save_result, save_sweep_result)
from ..errors import SettingError
from ..sweep import parse_shard, shard_dir


def _noise(s: str):
    try:
        return float(s)
    except ValueError:
        return s


def _cmd_trace(args) -> dict:
    from ..errors import PromptError
    from .causal_trace import causal_trace, trace_dataset, trace_sweep_from_log
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    shard = parse_shard(args.shard)   # a bad K/N is refused before the model loads
    if shard and not args.dataset:
        raise SettingError("--shard splits a dataset sweep: give it with --dataset (a --from-log summary reads "
                           "the shards' logs by itself)")
    if args.dataset or args.from_log:
        out = out_dir(args, "trace_sweep")
        if args.from_log:
            res = trace_sweep_from_log(args.from_log, min_p_clean=args.min_p_clean)
        else:
            res = trace_dataset(load_model(args), args.dataset, out, kinds=kinds, window=args.window,
                                samples=args.samples, noise=_noise(args.noise), seed=args.seed, min_p=args.min_p,
                                limit=args.limit, max_known=args.max_known, min_p_clean=args.min_p_clean,
                                progress=not args.json, shard=shard)
        if shard:   # a shard's result lives in its own log directory; the merge run draws the figures
            if not args.json:
                print("shard {}/{}: ".format(*shard) + f"{res.n_traced} of the {res.n_known} known facts are finished "
                      f"(this shard's, the other shards' and the main log's); run the same command without "
                      f"--shard to merge the shards and draw the figures")
            return {"shard": list(shard), "n_known": res.n_known, "n_traced": res.n_traced,
                    "dir": str(shard_dir(out, shard))}
        paths = save_sweep_result(res, "trace_sweep", args, "trace_sweep")
        summary = {"dataset": res.dataset, "n_rows": res.n_rows, "n_scanned": res.n_scanned,
                   "n_known": res.n_known, "n_traced": res.n_traced, "skipped": res.skipped[:20],
                   "n_skipped": len(res.skipped), "n_errors": len(res.errors), "errors": res.errors[:20],
                   "peaks": res.peaks, "mean_p_clean": res.mean_p_clean,
                   "mean_p_corrupt": res.mean_p_corrupt, "n_unknown_target": res.n_unknown_target,
                   "files": paths}
        if not args.json:
            print(f"{res.n_known} of {res.n_scanned} facts known; traced {res.n_traced}"
                  + (f"; {len(res.errors)} failed (listed in trace_sweep.json)" if res.errors else ""))
            for k, pk in res.peaks.items():
                print(f"  {k:6s} peak AIE {pk['aie']:.4f} at {pk['category']} layer {pk['layer']}")
        return summary
    if not args.prompt or not args.subject:
        raise PromptError("interp trace needs --prompt and --subject (or --dataset PATH for a sweep)")
    model = load_model(args)
    res = causal_trace(model, args.prompt, args.subject, args.target, kinds=kinds, window=args.window,
                       samples=args.samples, noise=_noise(args.noise), seed=args.seed,
                       occurrence=args.occurrence, context=args.context, min_p_clean=args.min_p_clean,
                       progress=not args.json)
    paths = save_result(res, "trace", args, "trace")
    summary = {"tokens": res.tokens, "subject_range": res.subject_range, "target": res.target,
               "target_multi_token": res.target_multi_token, "p_clean": res.p_clean,
               "p_corrupt": res.p_corrupt, "unknown_target": res.unknown_target, "files": paths}
    for k in res.kinds:
        g = res.grid(k, effect=True)
        flat = int(g.nan_to_num(-1e9).argmax())
        l, t = divmod(flat, g.shape[1])
        summary[f"{k}_max_ie"] = {"layer": l, "token": t, "ie": float(g[l, t])}
    if not args.json:
        print(f"target {res.target!r}: p_clean={res.p_clean:.4f} p_corrupt={res.p_corrupt:.4f}")
        for k in res.kinds:
            m = summary[f"{k}_max_ie"]
            print(f"  {k:6s} max IE {m['ie']:.4f} at layer {m['layer']} token {m['token']} {res.tokens[m['token']]!r}")
    return summary


def _cmd_patch(args) -> dict:
    from .attribution import attribution_patching, compare_with_patching
    from .patching import activation_patching
    model = load_model(args)
    sites = tuple(s.strip() for s in args.sites.split(",") if s.strip())
    kw = dict(sites=sites, layers=args.layers, positions=args.positions, direction=args.direction,
              metric=args.metric, answer=args.answer, wrong=args.wrong, heads=args.heads,
              neurons=args.neurons, context=args.context)
    res = activation_patching(model, args.clean, args.corrupt, per_position=not args.all_positions,
                              progress=not args.json, **kw)
    paths = save_result(res, "patching", args, "patch")
    summary = {"tokens": res.tokens, "answer": res.answer, "wrong": res.wrong, "metric": res.metric,
               "clean_metric": res.clean_metric, "corrupt_metric": res.corrupt_metric, "files": paths}
    for s in res.sites:
        e = res.normalized(s)
        summary[f"{s}_max_normalized"] = float(e.nan_to_num(-1e9).max())
    if args.atp:
        atp = attribution_patching(model, args.clean, args.corrupt, **kw)
        atp.save(out_dir(args, "patch"))
        summary["atp_spearman"] = compare_with_patching(atp, res)
    if args.atp_star:
        star = attribution_patching(model, args.clean, args.corrupt, method="atp*", **kw)
        star.save(out_dir(args, "patch") / "atp_star")
        summary["atp_star_spearman"] = compare_with_patching(star, res)
    if not args.json:
        print(f"{res.metric} clean={res.clean_metric:.4f} corrupt={res.corrupt_metric:.4f}")
        for s in res.sites:
            print(f"  {s:10s} max normalised effect {summary[f'{s}_max_normalized']:.3f}")
        if args.atp:
            print(f"  AtP Spearman vs patching: {summary['atp_spearman']}")
        if args.atp_star:
            print(f"  AtP* Spearman (|estimate| vs |effect|): {summary['atp_star_spearman']}")
    return summary


def _cmd_rag(args) -> dict:
    from ..datasets import data_dir
    from .rag import rag_comparison, source_phrase
    from .report import FAKEPEDIA
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    model = load_model(args)
    out = out_dir(args, "rag_comparison")
    res = rag_comparison(model, args.dataset or data_dir() / FAKEPEDIA, out, n_facts=args.n_facts,
                         kinds=kinds, window=args.window, samples=args.samples, noise=_noise(args.noise),
                         seed=args.seed, scan=args.scan, min_p_clean=args.min_p_clean, min_p=args.min_p,
                         fill_from=args.fill_from, progress=not args.json)
    paths = save_result(res, "rag_comparison", args, "rag_comparison")
    summary = {"n_facts": res.n_facts, "n_known": res.settings["n_known"], "n_scanned": res.settings["n_scanned"],
               "answers": res.answers, "p_clean": res.p_clean, "p_corrupt": res.p_corrupt, "summary": res.summary,
               "sources": res.sources, "n_errors": len(res.settings["errors"]), "files": paths}
    if not args.json:
        print(f"{res.n_facts} facts traced in 3 conditions ({source_phrase(res)}; {res.settings['n_known']} "
              f"known of {res.settings['n_scanned']} scanned)")
        for c, d in res.summary.items():
            print(f"  {c:24s} MLP AIE at the last subject token peaks {d['mlp_last_subject_peak']:.4f}; "
                  f"answers {res.answers[c]}")
    return summary


def register(sub, common) -> None:
    """Add ``interp trace``, ``interp patch`` and ``interp rag`` to the command line."""
    p = sub.add_parser("rag", parents=[common], help="causal traces with no / true / counterfactual context "
                       "(Wadhwa et al. 2024) over the Fakepedia facts the model knows; resumable")
    p.add_argument("--dataset", default=None, help="Fakepedia JSON lines (default: ../shared/data's)")
    p.add_argument("--fill-from", default=None,
                   help="known_1000 / LRE file: when --dataset has fewer than --n-facts known facts, take the "
                        "rest from it, each with a same-relation object swap as its counterfactual")
    p.add_argument("--n-facts", type=int, default=100, help="known facts to trace (each in 3 conditions)")
    p.add_argument("--scan", type=int, default=None, help="scan only the first N rows (default: all)")
    p.add_argument("--min-p", type=probability, default=None,
                   help="known if p(true object) >= this (default: clean top-1 == the true object's first token)")
    p.add_argument("--kinds", default="resid,mlp,attn")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--noise", default="3sd", help="'3sd' or an absolute float")
    p.add_argument("--seed", type=int, default=0)
    add_target_check_args(p)
    p.set_defaults(func=_cmd_rag)
    p = sub.add_parser("trace", parents=[common], help="ROME causal tracing of a prompt or a dataset")
    p.add_argument("--prompt", default=None)
    p.add_argument("--subject", default=None)
    p.add_argument("--target", default=None, help="answer to track (default: clean top-1; first token)")
    p.add_argument("--kinds", default="resid,mlp,attn",
                   help="resid (= ROME's hidden: resid_post, one layer), mlp, attn (module outputs, windowed)")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--noise", default="3sd", help="'3sd' or an absolute float")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--context", default=None, help="retrieved context placed before the prompt")
    p.add_argument("--occurrence", type=int, default=0, help="which occurrence of the subject (0 = first)")
    p.add_argument("--dataset", default=None, help="known_1000-style file: trace every known fact")
    p.add_argument("--limit", type=int, default=None, help="dataset: scan only the first N rows")
    p.add_argument("--max-known", type=int, default=None, help="dataset: trace at most N known facts")
    p.add_argument("--min-p", type=float, default=None,
                   help="dataset: known if p(attribute) >= this (default: clean top-1 == attribute)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="dataset: trace every N-th known fact (the K-th) into OUT/shards/K-of-N, so N processes "
                        "share a sweep; a run without --shard merges them")
    add_from_log_args(p, "a trace sweep's --out directory")
    add_target_check_args(p)
    p.set_defaults(func=_cmd_trace)
    p = sub.add_parser("patch", parents=[common], help="activation patching between two prompts (+ AtP)")
    p.add_argument("--clean", required=True)
    p.add_argument("--corrupt", required=True)
    p.add_argument("--sites", default="resid_pre",
                   help="comma list of resid_pre,resid_mid,resid_post,attn_out,mlp_out,head,neuron")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--metric", default="logit_diff", choices=["logit_diff", "prob", "logprob"])
    p.add_argument("--answer", default=None)
    p.add_argument("--wrong", default=None)
    add_index_arg(p, "--layers", "layer", "layers to patch")
    add_index_arg(p, "--positions", "position", "token positions to patch, -1 = last")
    add_index_arg(p, "--heads", "head", "heads of site 'head'")
    add_index_arg(p, "--neurons", "neuron", "MLP neurons of site 'neuron'")
    p.add_argument("--all-positions", action="store_true", help="unit sites: patch all positions at once")
    p.add_argument("--context", default=None)
    p.add_argument("--atp", action="store_true", help="also attribution patching + Spearman vs patching")
    p.add_argument("--atp-star", action="store_true",
                   help="also AtP* (QK fix + GradDrop; magnitudes) + Spearman of |AtP*| vs |patching|")
    p.set_defaults(func=_cmd_patch)
