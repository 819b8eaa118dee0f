"""Print the bad-input table (invocation → exit code → message) as markdown.

    PYTHONPATH=. .venv/bin/python tests/scripts/bad_input_table.py [WORKDIR]
"""
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs import CASES, build_inputs, cached_loads, judge, run_case, shorten  # noqa: E402

work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bad-input-"))
work.mkdir(parents=True, exist_ok=True)
os.chdir(tempfile.mkdtemp(prefix="cwd-", dir=work))  # default --out dirs (out/...): a fresh place, not the repo's
cached_loads()
t = time.perf_counter()
values = build_inputs(work)
print(f"<!-- inputs built in {time.perf_counter() - t:.1f} s -->")
print("| # | case | invocation (`interp …`) | exit | message (stderr) | expected piece |")
print("|---|---|---|---|---|---|")
bad = 0
t = time.perf_counter()
for i, (name, argv, want) in enumerate(CASES, 1):
    rc, err = run_case(argv, values)
    ok, err = judge(rc, err, want)
    bad += not ok
    inv = " ".join(a if a and " " not in a and len(a) < 40 else repr(a if len(a) < 40 else a[:30] + "…")
                   for a in argv)
    msg = shorten(err.strip(), values).replace("|", "\\|").replace("\n", " ⏎ ")
    print(f"| {i} | {name} | `{shorten(inv, values)}` | {rc} | {msg} | {'' if ok else '**FAIL** '}`{want}` |")
print(f"<!-- cases run in {time.perf_counter() - t:.1f} s -->")
print(f"\n{len(CASES) - bad} of {len(CASES)} cases exit 2 with one line containing the expected piece")
