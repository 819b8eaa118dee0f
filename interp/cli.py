"""The ``interp`` command line: every subcommand takes ``--json`` and ``--out DIR``.

Each method module registers its own subcommands through a ``register(sub, common)`` function
(listed in :data:`COMMAND_MODULES`), so the CLI and the library stay one object: a subcommand
parses its flags, calls the library function, saves the result with ``result.save(out)`` and its
figure with :func:`interp.figures.save_figure`, and returns a JSON-able summary.  ``--json``
prints that summary on stdout (logs go to stderr); errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: modules that define ``register(sub, common)``; each adds its subcommands
COMMAND_MODULES = [
    "interp.cli",
    "interp.neurons.cli",
    "interp.mediation.cli",
    "interp.attention.cli",
    "probes.cli",
]


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=None, help="HF id or local dir (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--engine", default="hf", choices=["hf", "transformer_lens", "nnsight"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None, help="directory for result files and figures")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def load_model(args):
    from .loading import load
    return load(args.model, engine=args.engine, device=args.device, dtype=args.dtype)


def out_dir(args, default: str) -> Path:
    return Path(args.out) if args.out else Path("out") / default


def save_result(result, fig_stem: str | None, args, default_dir: str) -> dict:
    """Save a result and its figure under --out; return the paths for the JSON summary."""
    from .figures import save_figure
    out = out_dir(args, default_dir)
    paths = {"result": str(result.save(out))}
    if fig_stem is not None and hasattr(result, "figure"):
        paths["figure"] = save_figure(result.figure(), out, fig_stem)
    return paths


# ---------------------------------------------------------------------- core commands
def _cmd_info(args) -> dict:
    model = load_model(args)
    info = model.info()
    if not args.json:
        print(repr(model))
        for k, v in info["sites"].items():
            print(f"  {k:13s} {'per layer' if v['per_layer'] else '         '}  [{v['shape']}]  {v['what']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def _cmd_lens(args) -> dict:
    from .lens import logit_lens
    model = load_model(args)
    res = logit_lens(model, args.prompt, target=args.target)
    paths = save_result(res, "logit_lens", args, "lens")
    last = [row[-1] for row in res.top_tokens]
    summary = {"prompt": res.prompt, "tokens": res.tokens, "final_top": last[-1],
               "final_p": float(res.top_probs[-1, -1]),
               "first_layer_with_final_top": next((res.layers[i] for i, t in enumerate(last)
                                                   if t == last[-1]), None),
               "top_last_position_by_layer": last, "files": paths}
    if not args.json:
        for l, t, p in zip(res.layers, last, res.top_probs[:, -1].tolist()):
            print(f"layer {l:3d}  {t!r:16s} p={p:.3f}")
    return summary


def _cmd_figures(args) -> dict:
    import time

    from .report import run_figures
    t = time.perf_counter()
    model = None if args.redraw else load_model(args)
    argv = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("interp", "__main__.py")) else ""
    path = run_figures(model, args.out or "figures", quick=args.quick, redraw=args.redraw,
                       only=args.only.split(",") if args.only else None,
                       command=f"interp {argv}".strip() if argv else "interp figures")
    summary = {"report": str(path), **json.loads((path.parent / "report.json").read_text()),
               "total_seconds": round(time.perf_counter() - t, 1)}
    if not args.json:
        print(f"wrote {path} in {summary['total_seconds']} s")
    return summary


def register(sub, common) -> None:
    p = sub.add_parser("figures", parents=[common], help="run the standard analyses, write figures/ and REPORT.md")
    p.add_argument("--quick", action="store_true", help="small settings: finishes in minutes on 2 cores")
    p.add_argument("--redraw", action="store_true", help="redraw from saved results only (no model)")
    p.add_argument("--only", default=None, help="comma-separated sections: lens,mediation,attention,neurons,probes")
    p.set_defaults(func=_cmd_figures)
    p = sub.add_parser("info", parents=[common], help="model, engine, architecture, sites, sizes")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("lens", parents=[common], help="logit lens of a prompt")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", default=None, help="token whose probability to track, e.g. ' Paris'")
    p.set_defaults(func=_cmd_lens)


def build_parser() -> argparse.ArgumentParser:
    import importlib
    parser = argparse.ArgumentParser(prog="interp", description="Mechanistic interpretability toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import InterpError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = args.func(args)
    except (InterpError, ValueError) as e:
        print(f"interp {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
