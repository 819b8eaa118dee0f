"""Kill harness (slow): each sweep's CLI is SIGKILLed at 10 random moments, resumed, and compared.

The protocol is ``tests/kill_harness.py``; this runs ``benchmarks/kill_resume.py`` (fork mode:
every run is ``interp.cli.main`` in its own process, killed with SIGKILL) once per sweep on a
tiny random model and checks that the resumed output equals the uninterrupted one — result files,
activation shards and every record of the sweep log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kill_harness import SWEEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_sigkill_ten_times_then_resume_equals_uninterrupted(sweep, tmp_path):
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kill_resume.py"), "--mode", "fork", "--kills", "10",
                        "--sweeps", sweep, "--work", str(tmp_path / "work"), "--json", str(report)],
                       capture_output=True, text=True, timeout=1500, cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert report.exists(), r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads(report.read_text())["sweeps"][0]
    assert rep["diffs"] == [], rep["diffs"]
    assert len(rep["kills"]) == 10 and rep["final_rc"] == 0, rep
    assert sum(k["units_after"] > k["units_before"] for k in rep["kills"]) >= 3, rep["kills"]  # kills during work
    assert r.returncode == 0
