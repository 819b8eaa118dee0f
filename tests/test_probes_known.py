"""probes.known: the known filter keeps exactly the facts a direct reference check keeps; the
pipeline probes only them, with grouped splits and intervals (tiny random model, a few seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny
from interp.errors import SettingError
from probes.data import ConflictExample, write_jsonl
from probes.known import BLANK_FIRST, known_conflicts

SUBJECTS = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta", "Iota", "Kappa", "Lambda", "Mu",
            "Nu", "Xi", "Omicron", "Pi", "Rho", "Sigma", "Tau", "Upsilon", "Phi", "Chi", "Psi", "Omega"]
TEMPLATES = ["{} is located in the city of", "{} speaks the language of"]


@pytest.fixture(scope="module")
def model():
    return tiny(n_layers=3)


def _reference_top(model, prompt: str) -> int:
    """The model's closed-book top-1 token, one prompt at a time, straight through Hugging Face."""
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return int(model.hf(ids).logits[0, -1].argmax())


@pytest.fixture(scope="module")
def rows(model) -> list[dict]:
    return _facts(model)


def _facts(model) -> list[dict]:
    """Cloze facts over the tiny model: about half get the model's own greedy word as the attribute
    (so it "knows" them), the rest a word it does not predict; both relations use every subject."""
    tok = model.tokenizer
    rows = []
    for t, tmpl in enumerate(TEMPLATES):
        for i, s in enumerate(SUBJECTS):
            prompt = tmpl.format(s)
            word = tok.decode([_reference_top(model, prompt)]).strip()
            if i % 3 != 2 and word.isalpha() and tok(" " + word, add_special_tokens=False)["input_ids"][:1] == \
                    [_reference_top(model, prompt)]:
                attr = word
            else:
                attr = ["Paris", "Rome", "Oslo", "Bern", "Lima"][i % 5]
            rows.append({"prompt": prompt, "subject": s, "attribute": attr, "relation_id": f"P{t}"})
    return rows


def _examples(rows) -> list[ConflictExample]:
    return [ConflictExample(f"x{i}", r["subject"].lower(), r["prompt"], f"{r['prompt']} {r['attribute']}.",
                            (r["attribute"],), f"{r['prompt']} Quito.", ("Quito",), i, "facts", "f.jsonl",
                            r["relation_id"]) for i, r in enumerate(rows)]


def test_known_filter_keeps_exactly_the_reference_facts(model, rows, tmp_path, monkeypatch):
    ex = _examples(rows)
    ex.append(ConflictExample("num", "year", "Alpha was born in", "Alpha was born in 1796.", ("1796",),
                              "Alpha was born in 1801.", ("1801",), 99, "facts", "f.jsonl", "P9"))
    ref = [e.id for e in ex if e.id != "num" and _reference_top(model, e.question) ==
           model.tokenizer(" " + e.org_answers[0], add_special_tokens=False)["input_ids"][0]]
    assert 3 <= len(ref) <= len(ex) - 3  # both kept and dropped facts: the test has teeth
    scan = known_conflicts(model, ex, out_dir=tmp_path / "scan", batch_size=5, progress=False)
    assert [e.id for e in scan.examples] == ref
    c = scan.counts["f.jsonl"]
    assert c["scanned"] == len(ex) and c["known"] == c["kept"] == len(ref) and c["excluded"] == {BLANK_FIRST: 1}
    # resumable: a rerun reads the log and runs no model
    monkeypatch.setattr("interp.known.check_known", lambda *a, **k: pytest.fail("scan was not resumed"))
    again = known_conflicts(model, ex, out_dir=tmp_path / "scan", progress=False)
    assert [e.id for e in again.examples] == ref
    # per-relation cap: the first N known of each relation, counted as known but not kept
    capped = known_conflicts(model, ex, out_dir=tmp_path / "scan", per_relation=1, progress=False)
    assert len(capped.examples) == len({e.relation for e in scan.examples})
    assert capped.counts["f.jsonl"]["known"] == len(ref) and capped.to_dict()["totals"]["kept"] == len(capped.examples)


def test_known_rule_errors(model, rows):
    ex = _examples(rows)[:2]
    with pytest.raises(SettingError, match="min_p"):
        known_conflicts(model, ex, rule="min_p", progress=False)
    with pytest.raises(SettingError, match="first_token"):
        known_conflicts(model, ex, rule="nope", progress=False)


def test_pipeline_probes_only_known_conflicts(model, rows, tmp_path):
    from probes.pipeline import probe_dataset
    from probes.splits import check_disjoint, grouped_split

    a = write_jsonl([r for r in rows if r["relation_id"] == "P0"], tmp_path / "a.jsonl")
    b = write_jsonl([r for r in rows if r["relation_id"] == "P1"], tmp_path / "b.jsonl")
    res = probe_dataset(model, f"facts:{a},{b}", tmp_path / "run", n_seeds=3, n_demos=1, known="first_token",
                        components=("resid", "mlp"), cache_dir=tmp_path / "acts", progress=False, iters=50)
    scan = json.loads((tmp_path / "run/known.json").read_text())
    kept = set(scan["kept_ids"])
    labels = json.loads((tmp_path / "run/labels.json").read_text())
    assert set(labels["ids"]) == kept and res.class_counts["n_examples"] == len(kept)
    assert res.class_counts["known_scan"]["totals"]["kept"] == len(kept) and res.settings["known"] == "first_token"
    # every probed example is one the model answers closed-book, by the same first-token rule
    ref = {f"{p}#{i}" for p, rs in (("a.jsonl", [r for r in rows if r["relation_id"] == "P0"]),
                                     ("b.jsonl", [r for r in rows if r["relation_id"] == "P1"]))
           for i, r in enumerate(rs) if _reference_top(model, r["prompt"]) ==
           model.tokenizer(" " + r["attribute"], add_special_tokens=False)["input_ids"][0]}
    assert {k.split("/")[-1] for k in kept} <= ref and len(ref) - len(kept) <= 2  # ≤ 1 demo group (2 facts)
    # the result carries intervals per layer and component, over grouped splits
    for comp in ("resid", "mlp"):
        d = res.components[comp]
        assert len(d["accuracy_ci"]) == 3
        assert all(lo <= m + 1e-9 and m <= hi + 1e-9 for m, (lo, hi) in zip(d["accuracy"], d["accuracy_ci"]))
        assert len(d["per_seed"]["accuracy"]) == 3 and len(d["auroc"]) == 3
    # splits are grouped by subject: a subject's rows (both relations, both contexts) stay on one side
    from probes.pipeline import prepare, task_rows
    ps, _, lab, _ = prepare(model, f"facts:{a},{b}", tmp_path / "run", n_demos=1, known="first_token",
                            components=("resid", "mlp"), cache_dir=tmp_path / "acts", progress=False)
    _, _, groups = task_rows("conflict", ps, lab)
    assert all(g == e.question.split(" ")[0].lower() for g, e in zip(groups, ps.examples))
    assert max(groups.count(g) for g in set(groups)) >= 4
    for seed in range(3):
        check_disjoint(grouped_split(groups, seed=seed), groups)
