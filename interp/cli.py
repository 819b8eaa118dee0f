"""The ``interp`` command line: every subcommand takes ``--json`` and ``--out DIR``.

Each method module registers its own subcommands through a ``register(sub, common)`` function
(listed in :data:`COMMAND_MODULES`), so the CLI and the library stay one object: a subcommand
parses its flags, calls the library function, saves the result with ``result.save(out)`` and its
figure with :func:`interp.figures.save_figure`, and returns a JSON-able summary.  ``--json``
prints that summary on stdout (logs go to stderr).

Errors: bad input — a flag argparse rejects, or any :class:`~interp.errors.InterpError` raised by
the library (they all name the problem and the fix) — prints one line ``interp CMD: error: …``
and exits with status 2.  Anything else is a bug of interp: one line saying so, exit status 1.
No traceback reaches the user unless ``--debug`` is given.

Index lists (``--layers``, ``--heads``, ``--neurons``, ``--positions``) have one grammar, parsed
by :func:`interp.clitools.index_list` alone; see :data:`interp.clitools.INDEX_GRAMMAR`.  The
flags, parsers and helpers every subcommand shares live in :mod:`interp.clitools`, so the
subcommand modules never import this module (no import cycle).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .clitools import INDEX_GRAMMAR, Parser, common_parser, load_model, save_result

#: modules that define ``register(sub, common)``; each adds its subcommands
COMMAND_MODULES = [
    "interp.cli",
    "interp.neurons.cli",
    "interp.concepts.cli",
    "interp.mediation.cli",
    "interp.attention.cli",
    "probes.cli",
]


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

    from .report import QUICK_OUT, run_figures
    t = time.perf_counter()
    model = None if args.redraw else load_model(args)
    argv = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("interp", "__main__.py")) else ""
    path = run_figures(model, args.out or (QUICK_OUT if args.quick else "figures"), quick=args.quick,
                       redraw=args.redraw, only=args.only.split(",") if args.only else None,
                       command=f"interp {argv}".strip() if argv else "interp figures")
    summary = {"report": str(path), **json.loads((path.parent / "report.json").read_text()),
               "total_seconds": round(time.perf_counter() - t, 1)}
    if not args.json:
        print(f"wrote {path} in {summary['total_seconds']} s")
    return summary


def register(sub, common) -> None:
    """Add ``interp figures``, ``interp info`` and ``interp lens`` to the command line."""
    p = sub.add_parser("figures", parents=[common], help="run the standard analyses, write figures/ and REPORT.md")
    from .report import QUICK_OUT, SECTIONS
    p.add_argument("--quick", action="store_true", help=f"small settings: finishes in minutes on 2 cores; writes "
                   f"to {QUICK_OUT} unless --out is given (never over a full run's figures)")
    p.add_argument("--redraw", action="store_true", help="redraw from saved results only (no model)")
    p.add_argument("--only", default=None, help=f"comma-separated sections: {','.join(SECTIONS)} (the "
                                                 f"others keep their last entries in REPORT.md)")
    p.set_defaults(func=_cmd_figures)
    p = sub.add_parser("info", parents=[common], help="model, engine, architecture, sites, sizes")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("lens", parents=[common], help="logit lens of a prompt")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", default=None, help="token whose probability to track, e.g. ' Paris'")
    p.set_defaults(func=_cmd_lens)


def build_parser() -> argparse.ArgumentParser:
    """The ``interp`` parser with every subcommand of :data:`COMMAND_MODULES`."""
    import importlib
    parser = Parser(prog="interp", description="Mechanistic interpretability toolkit",
                    epilog=INDEX_GRAMMAR + "\n\nbad input exits with status 2 and one line naming the fix; "
                    "--debug shows the traceback", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def _one_line_warnings(name: str) -> None:
    """Inside ``warnings.catch_warnings()``: interp's own warnings print as ``interp CMD: warning: …``."""
    from .errors import InterpWarning
    show = warnings.showwarning
    warnings.simplefilter("always", InterpWarning)

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InterpWarning):
            print(f"{name}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = one_line


def main(argv: list[str] | None = None) -> int:
    """Run ``interp`` with ``argv``: 0 on success, 2 for bad input (one line), 1 for a bug, 130 interrupted."""
    from .errors import InterpError
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error, already printed as one line (2)
        return int(e.code or 0)
    name = "interp " + " ".join(str(getattr(args, k)) for k in ("command", "neurons_command", "concepts_command")
                                if getattr(args, k, None))
    try:
        with warnings.catch_warnings():
            _one_line_warnings(name)
            summary = args.func(args)
        if args.json:
            print(json.dumps(summary, indent=1, default=str))
    except KeyboardInterrupt:
        print(f"{name}: interrupted; rerun the same command to resume a sweep", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — the one place errors become exit codes
        if getattr(args, "debug", False):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, InterpError):
            print(f"{name}: error: {msg}", file=sys.stderr)
            return 2
        print(f"{name}: internal error ({type(e).__name__}: {msg[:300]}); this is a bug in interp — rerun "
              f"with --debug for the traceback and report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
