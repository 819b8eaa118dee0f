"""`interp knockout` / `interp contributions`: stable JSON files, dataset sweeps, errors."""

from __future__ import annotations

import json

import pytest

from conftest import default_tokenizer, tiny_hf
from interp.cli import COMMAND_MODULES, main

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(autouse=True)
def html_only(monkeypatch):
    """PNG/PDF export drives a Chromium (10+ s a figure here) and is tested with the figures
    module; these tests check the JSON and that the figure's HTML is written."""
    import interp.figures
    monkeypatch.setattr(interp.figures, "static_export_available", lambda: (False, "skipped in tests"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_hf("llama").save_pretrained(d)
    default_tokenizer().save_pretrained(d)
    return str(d)


def test_registered():
    assert "interp.attention.cli" in COMMAND_MODULES


def test_knockout_json(tiny_dir, tmp_path, capsys):
    rc = main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "The Eiffel Tower",
               "--window", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    data = json.loads((tmp_path / "knockout.json").read_text())
    for key in ("tokens", "subject_range", "p_clean", "p_knockout", "relative_change", "window", "layers"):
        assert key in data
    assert set(data["p_knockout"]) == {"subject", "non_subject", "last"}
    assert all(len(v) == 3 for v in data["p_knockout"].values())
    assert data["subject_range"][0] == 0 and data["window"] == 1
    assert (tmp_path / "knockout.html").exists()
    summary = json.loads(capsys.readouterr().out)
    assert summary["p_knockout"] == data["p_knockout"]


def test_knockout_with_context(tiny_dir, tmp_path):
    rc = main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower",
               "--context", "The tower stands in Paris.", "--sources", "subject,context,last",
               "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "knockout.json").read_text())
    assert data["prompt"].startswith("Information is below: The tower stands in Paris.")
    assert data["context_range"][0] < data["subject_range"][0]
    assert set(data["p_knockout"]) == {"subject", "context", "last"}


def test_knockout_dataset(tiny_dir, tmp_path):
    ds = tmp_path / "facts.json"
    ds.write_text(json.dumps([
        {"prompt": PROMPT, "subject": "The Eiffel Tower", "attribute": "Paris"},
        {"prompt": "The capital of Roman Republic is", "subject": "Roman Republic", "attribute": "Rome"},
    ]))
    out = tmp_path / "sweep"
    assert main(["knockout", "--model", tiny_dir, "--dataset", str(ds), "--all-facts", "--n-facts", "2",
                 "--out", str(out), "--json"]) == 0
    data = json.loads((out / "knockout_sweep.json").read_text())
    assert data["n_known"] == 2 and set(data["mean"]) == {"subject", "non_subject", "last"}
    assert len(data["sem"]["subject"]) == 3
    assert (out / "sweep" / "items.jsonl").exists()


def test_contributions_json(tiny_dir, tmp_path):
    assert main(["contributions", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "The Eiffel Tower",
                 "--out", str(tmp_path), "--json"]) == 0
    data = json.loads((tmp_path / "contributions.json").read_text())
    for key in ("tokens", "target", "groups", "group_names", "head_src", "layer_src", "group_norm", "dla"):
        assert key in data
    assert data["group_names"] == ["subject", "rest"]
    assert len(data["head_src"]) == 3 and len(data["head_src"][0]) == 6
    assert (tmp_path / "contributions_tokens.html").exists() and (tmp_path / "contributions_heads.html").exists()


def test_errors_exit_2(tiny_dir, tmp_path, capsys):
    assert main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "Big Ben",
                 "--out", str(tmp_path)]) == 2
    assert "Big Ben" in capsys.readouterr().err
    assert main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "The Eiffel Tower",
                 "--window", "9", "--out", str(tmp_path)]) == 2
    assert "larger than the model" in capsys.readouterr().err


def test_position_zero_warning_line_and_bos(tiny_dir, tmp_path, capsys):
    rc = main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "The Eiffel Tower",
               "--window", "1", "--out", str(tmp_path / "a"), "--json", "--min-p-clean", "0"])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [l for l in err.splitlines() if "warning:" in l]
    assert len(lines) == 1 and lines[0].startswith("interp knockout: warning: attention_knockout: source set(s) "
                                                   "'subject' hold position 0")
    assert "--bos" in lines[0] and "Traceback" not in err
    assert json.loads((tmp_path / "a" / "knockout.json").read_text())["position_zero"] == ["subject"]
    for flag, first in ((["--bos"], "<|im_start|>"), (["--bos", "<|endoftext|>"], "<|endoftext|>")):
        rc = main(["knockout", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "The Eiffel Tower", "--window",
                   "1", "--out", str(tmp_path / "b"), "--json", "--min-p-clean", "0", *flag])
        out, err = capsys.readouterr()
        assert rc == 0 and "warning" not in err
        s = json.loads(out)
        assert s["bos"] == first and s["tokens"][0] == first and s["position_zero"] == []
    # a sweep counts the facts instead of warning per fact
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"prompt": PROMPT, "subject": "The Eiffel Tower", "attribute": "Paris"},
                                 {"prompt": "Rome is the capital of", "subject": "Rome", "attribute": "Italy"}]))
    rc = main(["knockout", "--model", tiny_dir, "--dataset", str(facts), "--all-facts", "--window", "1",
               "--out", str(tmp_path / "c"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["n_position_zero"] == 2 and json.loads(out)["n_unknown_target"] == 2
    assert [l for l in err.splitlines() if "warning:" in l] == [
        "interp knockout: warning: knockout_sweep: in 2 of 2 facts a blocked set holds position 0, a prompt token "
        "(no BOS: the attention sink); pass bos=True (--bos) or a chosen token",
        "interp knockout: warning: knockout_sweep: 2 of 2 facts track an answer with p_clean < 0.05 or that is "
        "not the top-1"]


def test_unknown_target_warning_line_and_threshold(tiny_dir, tmp_path, capsys):
    args = ["trace", "--model", tiny_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower", "--target", " Hawaii",
            "--kinds", "resid", "--samples", "1", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if "warning:" in l]
    assert len(lines) == 1 and lines[0].startswith("interp trace: warning: causal_trace: the target ' Hawaii' is not")
    assert "not the model's top-1" in json.loads(out)["unknown_target"]
    assert main(args + ["--min-p-clean", "1.5"]) == 2
    assert "--min-p-clean: 1.5 is not a probability" in capsys.readouterr().err
