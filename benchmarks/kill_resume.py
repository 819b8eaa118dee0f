"""Kill harness: SIGKILL each sweep's CLI at random moments, resume, compare with an uninterrupted run.

Sweeps: trace (``interp trace --dataset``), knockout (``interp knockout --dataset``), stats
(``interp neurons stats``), probe (``interp probe``: feature extraction, labels, fits), all on a
tiny random Llama saved to disk (see ``tests/kill_harness.py`` for the protocol).  Prints one
line per sweep and a JSON report; exits 1 if any resumed output differs from the reference.

    PYTHONPATH=. .venv/bin/python benchmarks/kill_resume.py [--kills 10] [--mode exec|fork]
                 [--sweeps trace,knockout,stats,probe] [--seed 0] [--work DIR] [--json PATH]

``--mode exec`` starts every run as a fresh ``python -m interp`` process (the real CLI; each start
pays the imports and the model load); ``--mode fork`` forks every run from one process that
imported interp and loaded the tiny model once (what the slow test uses).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kill_harness import SWEEPS, Runner, build_inputs, kill_and_resume  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--mode", choices=["exec", "fork"], default="exec")
    ap.add_argument("--sweeps", default=",".join(SWEEPS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tear", action="store_true", help="do not simulate kills in the middle of a write")
    ap.add_argument("--work", default=None, help="working directory (default: a fresh temporary one)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-resume-"))
    values = build_inputs(work)
    runner = Runner(args.mode, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                    preload=[values["model"]])
    reports, bad = [], 0
    for sweep in args.sweeps.split(","):
        t = time.perf_counter()
        rep = kill_and_resume(sweep, values, work, runner, kills=args.kills, seed=args.seed, tear=not args.no_tear)
        reports.append(asdict(rep) | {"ok": rep.ok, "wall_seconds": round(time.perf_counter() - t, 1)})
        bad += not rep.ok
        ats = ", ".join(f"{k['at_s']:.2f}" for k in rep.kills)
        print(f"{sweep:9s} {'OK ' if rep.ok else 'BAD'} {len(rep.kills)} kills (at {ats} s after start; "
              f"{sum(k['torn_record_appended'] for k in rep.kills)} torn records added), "
              f"{rep.finished_early} finished before the kill; reference {rep.ref_seconds:.1f} s "
              f"({rep.ref_units} units); final exit {rep.final_rc}; torn lines skipped {rep.torn_lines}; "
              f"differences: {rep.diffs or 'none'}  [{time.perf_counter() - t:.0f} s]", flush=True)
    out = json.dumps({"mode": args.mode, "kills": args.kills, "seed": args.seed, "sweeps": reports}, indent=1)
    if args.json:
        Path(args.json).write_text(out)
    print(out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
