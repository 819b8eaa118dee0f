"""``interp probe`` end to end on a tiny model: stable JSON, resumable, bad input exits cleanly."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import tiny
from interp.cli import main
from probes.data import write_jsonl


@pytest.fixture
def small_nq(data_dir, tmp_path):
    with gzip.open(data_dir / "nq_swap/nqswap_merged.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    del rows[7]["sub_answer"]  # a broken row: reported, the rest processed
    return write_jsonl(rows, tmp_path / "nq.jsonl")


@pytest.fixture
def tiny_cli(monkeypatch):
    monkeypatch.setattr("interp.clitools.load_model", lambda args: tiny(n_layers=3))


@pytest.mark.slow
def test_probe_cli_writes_stable_json_and_resumes(small_nq, tmp_path, tiny_cli, capsys):
    out = tmp_path / "run"
    argv = ["probe", "--dataset", f"nqswap:{small_nq}", "--task", "conflict", "--seeds", "2", "--demos", "1",
            "--max-chars", "60", "--demo-chars", "40", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    d = json.loads((out / "probe.json").read_text())
    assert d["kind"] == "ProbeResult" and d["task"] == "conflict" and d["layers"] == [0, 1, 2]
    for comp in ("resid", "mlp", "attn"):
        c = d["components"][comp]
        assert len(c["accuracy"]) == len(c["auroc"]) == len(c["accuracy_ci"]) == len(c["control_accuracy"]) == 3
    assert set(d["split_sizes"][0]) == {"train", "val", "test"} and "majority" in d["baselines"]
    assert d["class_counts"]["class_0"] == d["class_counts"]["class_1"] == d["class_counts"]["n_examples"]
    assert d["class_counts"]["skipped_dataset_rows"] == 1
    assert summary["best_layer"] in (0, 1, 2) and (out / "weights/conflict/best.safetensors").exists()
    assert (out / "probe_accuracy_conflict.html").exists()
    labels = json.loads((out / "labels.json").read_text())
    assert [7, "missing field(s): sub_answer"] in labels["skipped_rows"]
    # resumable: a rerun reuses the activation shards and the finished probe fits
    manifest = (out / "acts/ctx/manifest.json").read_text()
    fits = (out / "fits/conflict/items.jsonl").read_text()
    assert main(argv) == 0
    capsys.readouterr()
    assert (out / "acts/ctx/manifest.json").read_text() == manifest
    assert (out / "fits/conflict/items.jsonl").read_text() == fits
    assert json.loads((out / "probe.json").read_text())["components"] == d["components"]
    # the other task shares the cache; a random tiny model rarely answers from the context or
    # memory, so the source task may well have one class — then a clear error, not a solver crash
    rc = main(["probe", "--dataset", f"nqswap:{small_nq}", "--task", "source", "--seeds", "2", "--demos", "1",
               "--max-chars", "60", "--demo-chars", "40", "--cache", str(out / "acts"), "--out", str(tmp_path / "src")])
    err = capsys.readouterr().err
    counts = json.loads((tmp_path / "src/labels.json").read_text())["labels"]["counts"]
    if counts["context"] == 0 or counts["memory"] == 0:
        assert rc == 2 and "only one class" in err and "source task" in err
    else:
        assert rc == 0


def test_probe_cli_bad_input(tmp_path, tiny_cli, capsys):
    assert main(["probe", "--dataset", f"nqswap:{tmp_path}/missing.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["probe", "--dataset", f"csv:{tmp_path}/x.csv", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nqswap" in err and "conflictqa" in err and "facts" in err
    assert main(["probe", "--dataset", f"nqswap:{tmp_path}/x", "--components", "resid,ffn",
                 "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    facts = write_jsonl([{"prompt": f"{s} is the capital of", "subject": s, "attribute": o}
                         for s, o in (("Rome", "Italy"), ("Paris", "France"))], tmp_path / "f.jsonl")
    assert main(["probe", "--dataset", f"facts:{facts},{tmp_path}/none.json", "--out", str(tmp_path / "o")]) == 2
    assert "none.json does not exist" in capsys.readouterr().err
    assert main(["probe", "--dataset", f"facts:{facts}", "--known", "min_p", "--out", str(tmp_path / "o")]) == 2
    assert "--known-min-p" in capsys.readouterr().err
    assert main(["probe", "--dataset", f"facts:{facts}", "--per-relation", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--known first_token" in capsys.readouterr().err


def test_report_redraw_without_results_names_the_command(tmp_path):
    from interp.errors import ResultMissingError
    from probes.report import report_sections
    with pytest.raises(ResultMissingError, match="interp probe --dataset nqswap:"):
        report_sections(None, tmp_path, quick=True)
