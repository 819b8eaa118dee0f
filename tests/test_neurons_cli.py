"""``interp neurons …`` / ``interp concepts …``: stable JSON on the default model, errors exit 2."""

from __future__ import annotations

import json

import pytest

from interp.cli import main


def _run(capsys, argv):
    rc = main(argv + ["--json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


@pytest.mark.slow
def test_decode_search_find_cli(tmp_path, capsys):
    out = tmp_path / "map"
    rc, s, _ = _run(capsys, ["neurons", "decode", "--layers", "28", "--top-k", "200", "--directions", "out",
                             "--no-bottom", "--out", str(out)])
    assert rc == 0 and s["n_entries"] == 1536 and s["layers"] == [28]
    table = json.loads((out / "neurons.json").read_text())
    e = table[258]
    assert (e["layer"], e["neuron"], e["direction"]) == (28, 258, "out")
    assert {"top_tokens", "top_scores"} <= set(e) and e["top_tokens"][0] == " Japanese"
    rc, s, _ = _run(capsys, ["neurons", "search", "--token", " Japan", "--map", str(out), "--out", str(tmp_path)])
    assert rc == 0 and any(h["layer"] == 28 and h["neuron"] == 258 for h in s["hits"])
    rc, s, _ = _run(capsys, ["concepts", "find", "--concept", "Japan", "--terms", "japan", "japanese", "tokyo",
                             "--map", str(out), "--out", str(tmp_path / "c")])
    assert rc == 0 and (s["candidates"][0]["layer"], s["candidates"][0]["index"]) == (28, 258)
    rc, s, _ = _run(capsys, ["concepts", "find", "--concept", "Zqxwvy", "--map", str(out), "--out", str(tmp_path / "c")])
    assert rc == 0 and s["n_candidates"] == 0 and "no value vector" in s["message"]


@pytest.mark.slow
def test_stats_and_compare_cli(tmp_path, capsys, data_dir):
    corpus = data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json"
    rc, s, _ = _run(capsys, ["neurons", "stats", "--corpus", str(corpus), "--layers", "0,29", "--max-tokens", "64",
                             "--max-len", "32", "--out", str(tmp_path / "st")])
    assert rc == 0 and s["n_tokens"] == 64 and set(s["per_layer"]) >= {"dead", "token_detector", "positional"}
    (tmp_path / "empty.json").write_text("[]")
    rc, _, err = _run(capsys, ["neurons", "stats", "--corpus", str(tmp_path / "empty.json"), "--out", str(tmp_path)])
    assert rc == 2 and "corpus is empty" in err
    rc, s, _ = _run(capsys, ["concepts", "compare", "--model-a", "default", "--model-b", "default", "--vectors", "28:258",
                             "--top-k", "50", "--out", str(tmp_path / "cmp")])
    assert rc == 0 and s["vectors"][0]["cosine"] == pytest.approx(1.0) and s["vectors"][0]["jaccard"] == 1.0


def test_cli_bad_input(tmp_path, capsys):
    from conftest import tiny_hf, default_tokenizer
    small = tmp_path / "small"
    tiny_hf("llama", n_layers=2).save_pretrained(small)
    default_tokenizer().save_pretrained(small)
    rc, _, err = _run(capsys, ["concepts", "compare", "--model-a", str(small), "--model-b", "default"])
    assert rc == 2 and "different shapes" in err
    rc, _, err = _run(capsys, ["neurons", "decode", "--model", str(small), "--layers", "5", "--out", str(tmp_path)])
    assert rc == 2 and "layer 5 out of range" in err
    rc, _, err = _run(capsys, ["neurons", "clamp", "--model", str(small), "--prompt", "hi", "--neuron", "0:999",
                               "--target", " a", "--out", str(tmp_path)])
    assert rc == 2 and "neuron 999 out of range" in err


def test_report_redraw_without_results_names_the_command(tmp_path):
    from interp.concepts.report import report_sections as concepts_sections
    from interp.errors import ResultMissingError
    from interp.neurons.report import report_sections
    with pytest.raises(ResultMissingError, match="make it with: interp figures --only neurons --out .* --quick"):
        report_sections(None, tmp_path, quick=True)
    with pytest.raises(ResultMissingError, match="make it with: interp concepts find --concept Japan"):
        concepts_sections(None, tmp_path, quick=True)
