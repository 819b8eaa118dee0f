"""Bad input on every subcommand exits 2 with one line naming the problem and the fix.

The cases are the table in ``tests/bad_inputs.py`` (also printed for the issue's note by
``tests/scripts/bad_input_table.py``).  They run in-process (``interp.cli.main``) on tiny random
models saved to disk; models are loaded once per name (see ``bad_inputs.cached_loads``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bad_inputs import CASES, build_inputs, cached_loads, judge, run_case


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    undo = cached_loads()
    try:
        yield build_inputs(tmp_path_factory.mktemp("bad_input"))
    finally:
        undo()


@pytest.fixture
def cached(inputs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # default output dirs (out/...) never land in the repository
    undo = cached_loads()
    yield inputs
    undo()


def test_table_has_forty_cases_over_every_subcommand():
    from interp.cli import build_parser
    import argparse
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = set()
    for name, p in sub.choices.items():
        inner = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        names |= {f"{name} {n}" for n in inner[0].choices} if inner else {name}
    covered = {" ".join(argv[:2]) if argv[0] in ("neurons", "concepts") else argv[0] for _, argv, _ in CASES}
    assert names <= covered, names - covered


@pytest.mark.parametrize("name, argv, want", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(cached, name, argv, want):
    rc, err = run_case(argv, cached)
    ok, line = judge(rc, err, want)
    assert ok, f"exit {rc}, stderr:\n{err}"


def test_debug_shows_the_traceback(cached):
    from bad_inputs import fill
    from interp.cli import main
    from interp.errors import SpanNotFoundError
    argv = fill(["trace", "--model", "{tiny}", "--prompt", "The Eiffel Tower is in", "--subject", "Louvre",
                 "--debug"], cached)
    with pytest.raises(SpanNotFoundError):
        main(argv)


def test_internal_errors_are_one_line_exit_1(cached, capsys, monkeypatch):
    import interp.lens
    monkeypatch.setattr(interp.lens, "logit_lens", lambda *a, **k: {}["boom"])
    from bad_inputs import fill
    from interp.cli import main
    assert main(fill(["lens", "--model", "{tiny}", "--prompt", "x"], cached)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError: 'boom')" in err and "--debug" in err


def test_subprocess_has_no_traceback(cached):
    r = subprocess.run([sys.executable, "-m", "interp", "knockout", "--layers", "3-1"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
