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
