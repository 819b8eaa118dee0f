"""The interp CLI: info and lens, JSON output and error exit codes."""

import json
import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True, text=True)


def test_info_json(tmp_path):
    r = _cli("info", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n_layers"] == 30 and info["model_type"] == "llama" and "mlp_post" in info["sites"]
    assert json.loads((tmp_path / "info.json").read_text())["d_model"] == 576


def test_lens_json_and_files(tmp_path):
    r = _cli("lens", "--prompt", "The Eiffel Tower is located in the city of", "--target", " Paris",
             "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["final_top"] == " Paris" and abs(s["final_p"] - 0.70) < 0.02
    assert (tmp_path / "lens.json").exists() and (tmp_path / "logit_lens.html").exists()
    lens = json.loads((tmp_path / "lens.json").read_text())
    assert len(lens["top_probs"]) == 30 and len(lens["tokens"]) == len(lens["top_probs"][0])


def test_cli_errors_are_one_line_exit_2():
    r = _cli("lens", "--prompt", "   ")
    assert r.returncode == 2 and "prompt 0 is empty" in r.stderr and "Traceback" not in r.stderr
    r = _cli("info", "--model", "no-such-model")
    assert r.returncode == 2 and "neither a local directory" in r.stderr


# ---------------------------------------------------------------------- one index grammar
import argparse  # noqa: E402

import pytest  # noqa: E402

from interp.cli import build_parser, main  # noqa: E402
from interp.clitools import INDEX_GRAMMAR, index_list  # noqa: E402


@pytest.mark.parametrize("text, want", [
    ("5", [5]), ("0-9", list(range(10))), ("0,3,7", [0, 3, 7]), ("all", None), ("ALL", None),
    ("0-3,7", [0, 1, 2, 3, 7]), (" 7 , 0-1 ", [0, 1, 7]), ("3,3,1-3", [1, 2, 3]), ("-1", [-1]), ("2-2", [2]),
])
def test_index_grammar(text, want):
    assert index_list(text) == want


@pytest.mark.parametrize("text, msg", [
    ("5-3", "runs backwards: write 3-5"), ("a", "'a' is not an index"), ("1,,2", "an empty item"),
    ("0:5", "'0:5' is not an index"), ("1.5", "not an index"), ("-3-1", "not an index"), ("", "an empty item"),
])
def test_index_grammar_errors(text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        index_list(text)


def _flags(parser, path=()):
    """(subcommand path, option strings) of every subparser."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, p in a.choices.items():
                yield from _flags(p, path + (name,))
    yield path, {s for a in parser._actions for s in a.option_strings}, parser


def test_every_layers_flag_uses_the_one_grammar(capsys):
    subs = [(path, p) for path, flags, p in _flags(build_parser()) if "--layers" in flags]
    assert {" ".join(path) for path, _ in subs} >= {"patch", "knockout", "probe", "neurons decode",
                                                     "neurons stats", "neurons search", "concepts find"}
    for path, p in subs:
        act = next(a for a in p._actions if "--layers" in a.option_strings)
        assert act.type("0-2,7") == [0, 1, 2, 7] and act.type("all") is None, path
    assert main(["--help"]) == 0
    assert INDEX_GRAMMAR.splitlines()[2] in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    assert main(["knockout", "--layers", "9-2", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("interp knockout: error: argument --layers: the range '9-2' runs backwards: write 2-9; write "
                   "layers as 5, 0-9 (inclusive), 0,3,7, 0-3,7 or all (see interp knockout --help)\n")
