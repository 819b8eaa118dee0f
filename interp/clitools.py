"""What every ``interp`` subcommand shares: the common flags, the one index grammar, loading the
model, and saving a result with its figure.

Subcommand modules (``interp/<family>/cli.py``, ``probes/cli.py``) import from here and never
from :mod:`interp.cli`, which imports them: the command line is assembled in one direction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: the one grammar of every index-list flag, shown in ``interp --help``
INDEX_GRAMMAR = """\
index lists (--layers, --heads, --neurons, --positions) all read the same way:
  5          one index
  0-9        an inclusive range (0, 1, ..., 9)
  0,3,7      a comma list; items combine: 0-3,7,12-14
  all        every index (the default when the flag is left out)
  -1         counts from the end (layers, positions); ranges take non-negative ends
  indices are checked against the model once it is loaded: out of range is an error, exit 2"""


def index_list(text: str, what: str = "index") -> list[int] | None:
    """Parse one index list of :data:`INDEX_GRAMMAR`: ``None`` for ``all``, else sorted unique ints."""
    import re
    t = str(text).strip()
    if t.lower() == "all":
        return None
    out: set[int] = set()
    for part in t.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):
            out.add(int(part))
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m and int(m[1]) <= int(m[2]):
            out.update(range(int(m[1]), int(m[2]) + 1))
            continue
        hint = (f"the range {part!r} runs backwards: write {m[2]}-{m[1]}" if m else
                f"{part!r} is not an index" if part else "an empty item")
        raise argparse.ArgumentTypeError(
            f"{hint}; write {what}s as 5, 0-9 (inclusive), 0,3,7, 0-3,7 or all")
    return sorted(out)


def index_type(what: str):
    """An argparse ``type=`` that reads one index list of :data:`INDEX_GRAMMAR`."""
    def parse(text):
        return index_list(text, what)
    parse.__name__ = f"{what} list"
    return parse


def add_index_arg(p, flag: str, what: str, help: str) -> None:
    """Add ``flag`` (e.g. ``--layers``) reading the one index grammar; default None (= all)."""
    p.add_argument(flag, type=index_type(what), default=None, metavar=what.upper() + "S",
                   help=f"{help} (e.g. 5, 0-9, 0,3,7, 0-3,7, all; default all)")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``interp CMD: error: PROBLEM (see interp CMD --help)``, exit 2."""

    def error(self, message):
        """Print ``PROG: error: PROBLEM (see PROG --help)`` and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def common_parser() -> argparse.ArgumentParser:
    """The flags every subcommand takes: model, engine, device, dtype, --out, --json, --debug."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=None, help="HF id or local dir (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--engine", default=None, choices=["hf", "transformer_lens", "nnsight"],
                   help="default: hf (nnsight with --remote)")
    p.add_argument("--remote", default=None, choices=["local", "ndif"],
                   help="run the model through nnsight's remote execution: 'ndif' on NDIF (--model a hosted "
                        "Hugging Face id, NDIF_API_KEY set; no weights downloaded), 'local' the same requests "
                        "run here with interp hidden as on the server; with --out, finished requests are "
                        "logged in OUT/remote-requests so a killed run resumes")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device-map", default=None, help="spread a large model over devices, e.g. 'auto' "
                   "(needs accelerate; instead of --device)")
    p.add_argument("--out", default=None, help="directory for result files and figures")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the Python traceback of an error")
    return p


def probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a probability in [0, 1]") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not a probability; give a value in [0, 1]")
    return v


def add_target_check_args(p, *, bos: bool = False) -> None:
    """``--min-p-clean`` (the unknown-target warning's threshold) and, for knockouts, ``--bos``."""
    from .known import MIN_P_CLEAN
    p.add_argument("--min-p-clean", type=probability, default=MIN_P_CLEAN, metavar="P",
                   help=f"warn when the tracked answer is not the clean top-1 or its clean probability is "
                        f"below P (default {MIN_P_CLEAN}; sweeps count such facts)")
    if bos:
        p.add_argument("--bos", nargs="?", const=True, default=None, metavar="TOKEN",
                       help="prepend the tokenizer's BOS (or TOKEN, e.g. '<|endoftext|>') so that position 0, "
                            "the attention sink, is not a prompt token; without it a blocked set holding "
                            "position 0 is flagged. The prompt changes, so p_clean changes (both are recorded)")


def layer_index_pairs(items, what: str = "layer:index") -> list[tuple[int, int]]:
    """``["20:1090", "3:7"]`` → ``[(20, 1090), (3, 7)]`` (neurons, value vectors), or a clear error."""
    from .errors import InterpError
    out = []
    for s in items or []:
        try:
            l, i = s.split(":")
            out.append((int(l), int(i)))
        except ValueError:
            raise InterpError(f"{s!r} is not {what} (e.g. 20:1090)") from None
    return out


def load_model(args):
    """Load the model the common flags name (:func:`interp.load`)."""
    from .loading import load
    remote = getattr(args, "remote", None) or False
    model = load(args.model, engine=args.engine, device=args.device, dtype=args.dtype,
                 device_map=getattr(args, "device_map", None), remote=remote)
    if remote and getattr(args, "out", None):
        model.engine.session.log_to(Path(args.out) / "remote-requests")
    return model


def out_dir(args, default: str) -> Path:
    """``--out`` or ``out/<default>``."""
    return Path(args.out) if args.out else Path("out") / default


def add_from_log_args(p, what: str) -> None:
    """``--from-log DIR`` and ``--mask-nonsignificant``: a dataset sweep's result and figure drawn
    from its log (``config.json`` + ``items.jsonl``) without the model."""
    p.add_argument("--from-log", default=None, metavar="DIR",
                   help=f"summarise {what} (no model, nothing written there; a running sweep: facts so far), "
                        f"with per-cell bootstrap CIs and maxT-corrected sign-flip p-values")
    p.add_argument("--mask-nonsignificant", action="store_true",
                   help="sweep figure: blank the cells whose corrected p-value is not below 0.05")


def save_sweep_result(result, fig_stem: str, args, default_dir: str) -> dict:
    """:func:`save_result` for a dataset sweep, whose figure masks non-significant cells with
    ``--mask-nonsignificant``."""
    from .figures import save_figure
    out = out_dir(args, default_dir)
    paths = {"result": str(result.save(out)),
             "figure": save_figure(result.figure(mask_nonsignificant=getattr(args, "mask_nonsignificant", False)),
                                   out, fig_stem)}
    return paths


def save_result(result, fig_stem: str | None, args, default_dir: str) -> dict:
    """Save a result and its figure under --out; return the paths for the JSON summary."""
    from .figures import save_figure
    out = out_dir(args, default_dir)
    paths = {"result": str(result.save(out))}
    if fig_stem is not None and hasattr(result, "figure"):
        paths["figure"] = save_figure(result.figure(), out, fig_stem)
    return paths
