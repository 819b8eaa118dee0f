"""``interp probe``: flags → :func:`probes.pipeline.probe_dataset`, result + figure under ``--out``.

The pipeline itself (steps, caching, resuming) is :mod:`probes.pipeline`; this module only
parses, prints and saves.  ``OUT/probe.json`` is the stable JSON (:class:`probes.result.ProbeResult`)
and ``OUT/probe_accuracy_<task>.{html,png,pdf}`` its figure.
"""

from __future__ import annotations

from pathlib import Path

from .pipeline import TASKS


def _cmd_probe(args) -> dict:
    from interp import clitools
    from interp.figures import save_figure

    from .pipeline import probe_dataset

    model = clitools.load_model(args)
    out = Path(args.out or "out/probe")
    res = probe_dataset(model, args.dataset, out, task=args.task, limit=args.limit,
                        components=args.components.split(","), layers=args.layers,
                        n_seeds=args.seeds, n_demos=args.demos, max_chars=args.max_chars,
                        demo_chars=args.demo_chars, cache_dir=args.cache, batch_size=args.batch_size,
                        progress=not args.json, known=args.known, known_min_p=args.known_min_p,
                        per_relation=args.per_relation)
    fig = save_figure(res.figure(), out, f"probe_accuracy_{res.task}")
    summary = {**res.summary(), "files": {"result": str(out / "probe.json"), "figure": fig}}
    if not args.json:
        for comp, d in res.components.items():
            acc = d["accuracy"]
            k = max(range(len(acc)), key=acc.__getitem__)
            print(f"{comp:6s} best layer {res.layers[k]:3d}: acc {acc[k]:.3f} "
                  f"[{d['accuracy_ci'][k][0]:.3f}, {d['accuracy_ci'][k][1]:.3f}]  control "
                  f"{d.get('control_accuracy', [float('nan')] * len(acc))[k]:.3f}")
        scan = res.class_counts.get("known_scan")
        if scan:
            print(f"known scan ({scan['rule']}): " + "; ".join(
                f"{o}: {c['kept']} kept / {c['known']} known / {c['scanned']} scanned" for o, c in scan["counts"].items()))
        print(f"majority baseline {res.baselines['majority']:.3f}; classes "
              f"{ {k: v for k, v in res.class_counts.items() if k != 'known_scan'} }")
    return summary


def register(sub, common) -> None:
    """Add ``interp probe`` to the command line."""
    from interp.clitools import add_index_arg
    from interp.known import KNOWN_RULES
    p = sub.add_parser("probe", parents=[common],
                       help="knowledge-conflict probes: layer-wise accuracy per component (Zhao et al. 2024)")
    p.add_argument("--dataset", required=True,
                   help="nqswap:PATH (or nqswap:HF_NAME online) | conflictqa:PATH | facts:PATH[,PATH…] (files "
                        "or directories of known_1000 / LRE / Fakepedia facts, pooled)")
    p.add_argument("--task", default="conflict", choices=TASKS,
                   help="conflict: original vs substituted context; source: context vs memory answer")
    add_index_arg(p, "--layers", "layer", "layers to probe")
    p.add_argument("--components", default="resid,mlp,attn", help="comma list of resid, mlp, attn")
    p.add_argument("--limit", type=int, default=None, help="use the first N dataset rows (of each file, for "
                                                               "pooled facts)")
    p.add_argument("--known", default=None, metavar="RULE", choices=tuple(KNOWN_RULES),
                   help="probe only conflicts with the model's memory: keep the examples it answers closed-book "
                        "under this known-fact rule (first_token recommended; see probes.known)")
    p.add_argument("--known-min-p", type=float, default=None, help="threshold of the min_p known rule")
    p.add_argument("--per-relation", type=int, default=None,
                   help="with --known: keep at most N known examples per source file and relation")
    p.add_argument("--seeds", type=int, default=5, help="grouped splits to average over")
    p.add_argument("--demos", type=int, default=4, help="few-shot demonstrations per prompt (paper: 4)")
    p.add_argument("--max-chars", type=int, default=160, help="context budget of the probed example")
    p.add_argument("--demo-chars", type=int, default=80, help="context budget of each demonstration")
    p.add_argument("--cache", default=None, help="activation cache directory (default OUT/acts); share it "
                                                  "between tasks")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_cmd_probe)
