"""probes.data / prompts / labels / splits: loaders on the real files, bad input, grouped splits."""

from __future__ import annotations

import json

import pytest

from interp.errors import DatasetError
from probes.data import (FORMATS, build_fact_conflicts, load_conflictqa, load_conflicts, load_nqswap,
                         write_jsonl)
from probes.prompts import build_prompts, clean, truncate_context
from probes.splits import check_disjoint, grouped_split

NQ = "nq_swap/nqswap_merged.jsonl.gz"


def _nq_row(i, **drop):
    r = {"question": f"who is person {i}", "org_context": f"<P> Person {i} is Alice{i} . Other text . </P>",
         "org_answer": [f"Alice{i}"], "sub_context": f"<P> Person {i} is Bob{i} . Other text . </P>",
         "sub_answer": [f"Bob{i}"]}
    for k in drop:
        r.pop(k)
    return r


def test_nqswap_real_file(data_dir):
    cs = load_nqswap(data_dir / NQ, limit=50)
    assert len(cs) == 50 and cs.format == "nqswap"
    e = cs.examples[0]
    assert e.question and e.org_answers and e.sub_answers and e.org_context != e.sub_context
    assert cs.examples[0].group == cs.examples[1].group  # NQ-Swap repeats a question with new substitutes


def test_spec_dispatch_and_unknown_format(data_dir, tmp_path):
    assert len(load_conflicts(f"nqswap:{data_dir / NQ}", limit=5)) == 5
    with pytest.raises(DatasetError) as e:
        load_conflicts(f"squad:{data_dir / NQ}")
    for f in FORMATS:
        assert f in str(e.value)
    with pytest.raises(DatasetError, match="FORMAT:PATH"):
        load_conflicts(str(data_dir / NQ))  # no prefix


def test_missing_paths_are_typed_errors(tmp_path):
    for spec in (f"nqswap:{tmp_path}/nope.jsonl.gz", f"conflictqa:{tmp_path}/nope.jsonl", f"facts:{tmp_path}/x.json"):
        with pytest.raises(DatasetError, match="does not exist"):
            load_conflicts(spec)


def test_hub_name_offline_is_clear(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="local NQ-Swap"):
        load_nqswap("nobody-xyz/NQ-Swap-does-not-exist")


def test_rows_missing_fields_reported_rest_loaded(tmp_path):
    rows = [_nq_row(0), _nq_row(1, sub_answer=1), _nq_row(2), _nq_row(3, question=1), "not a dict", _nq_row(5)]
    rows[2]["org_answer"] = []  # empty answer list counts as missing
    p = write_jsonl(rows, tmp_path / "nq.jsonl.gz")
    cs = load_conflicts(f"nqswap:{p}")
    assert [e.row for e in cs.examples] == [0, 5]
    skipped = dict(cs.report.skipped)
    assert set(skipped) == {1, 2, 3, 4}
    assert "sub_answer" in skipped[1] and "org_answer" in skipped[2] and "question" in skipped[3]
    assert "row 1" in cs.report.summary()
    bad = write_jsonl([_nq_row(0, sub_context=1)], tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="no usable nqswap rows"):
        load_conflicts(f"nqswap:{bad}")


def test_conflictqa_real_file(data_dir):
    cs = load_conflictqa(data_dir / "conflictqa/conflictQA-strategyQA-llama2-7b.jsonl", limit=20)
    assert len(cs) == 20
    e = cs.examples[0]
    assert e.org_context != e.sub_context and e.org_answers[0] != e.sub_answers[0]


@pytest.mark.parametrize("rel", ["known_1000/known_1000.json", "fakepedia/base_fakepedia_subset_slim.jsonl",
                                 "lre_relations/data/factual/country_capital_city.json"])
def test_fact_conflicts_same_relation_substitute(data_dir, rel):
    path = data_dir / rel
    if not path.exists():  # the LRE file name: pick any factual relation
        path = sorted((data_dir / "lre_relations/data/factual").glob("*.json"))[0]
    cs = build_fact_conflicts(path, limit=60)
    assert len(cs) > 10
    by_rel_objects: dict = {}
    from interp.datasets import load_known_facts
    facts, _ = load_known_facts(path)
    for f in facts:
        by_rel_objects.setdefault(f.relation, set()).add(f.attribute)
    rel_of = {f.row: f.relation for f in facts}
    from interp.datasets import read_records
    own = {i: r.get("counterfactual_object") for i, r in enumerate(read_records(path))}
    for e in cs.examples:
        assert e.sub_answers[0] != e.org_answers[0]
        if own.get(e.row):  # Fakepedia: the row's own counterfactual object
            assert e.sub_answers[0] == own[e.row]
        else:
            assert e.sub_answers[0] in by_rel_objects[rel_of[e.row]]  # substitute of the same relation
        assert e.org_context.endswith(f" {e.org_answers[0]}.") and e.sub_context.endswith(f" {e.sub_answers[0]}.")
        assert e.relation == rel_of[e.row] and e.origin == rel


def test_pooled_fact_files_directories_and_repeats(data_dir, tmp_path):
    lre = data_dir / "lre_relations/data/factual"
    spec = f"facts:{data_dir / 'known_1000/known_1000.json'},{lre},{data_dir / 'fakepedia/base_fakepedia_subset_slim.jsonl'}"
    cs = load_conflicts(spec, limit=5)
    origins = {e.origin for e in cs.examples}
    n_lre = len(list(lre.glob("*.json")))
    assert len(origins) == 2 + n_lre and "known_1000/known_1000.json" in origins
    assert all(sum(e.origin == o for e in cs.examples) <= 5 for o in origins)  # the limit is per file
    assert len({e.id for e in cs.examples}) == len(cs)  # ids stay unique across files
    # Fakepedia lists a fact once per counterfactual: the repeats are reported, the fact kept once
    fk = build_fact_conflicts(data_dir / "fakepedia/base_fakepedia_subset_slim.jsonl")
    assert len({(e.question, e.org_answers) for e in fk.examples}) == len(fk)
    assert any("repeats the fact of row" in why for _, why in fk.report.skipped)
    # a subject in two files is one group, so a grouped split keeps its facts on one side
    a = write_jsonl([{"prompt": f"{s} is located in", "subject": s, "attribute": o, "relation_id": "P1"}
                     for s, o in [("Alpha", "Paris"), ("Beta", "Rome"), ("Gamma", "Oslo"), ("Delta", "Bern")]],
                    tmp_path / "a.jsonl")
    b = write_jsonl([{"prompt": f"{s} speaks", "subject": s, "attribute": o, "relation_id": "P2"}
                     for s, o in [("alpha", "French"), ("Beta", "Italian"), ("Omega", "Greek")]], tmp_path / "b.jsonl")
    pooled = load_conflicts(f"facts:{a},{b}")
    groups = [e.group for e in pooled.examples]
    assert groups.count("alpha") == 2 and groups.count("beta") == 2
    for seed in range(4):
        check_disjoint(grouped_split(groups, seed=seed), groups)
    with pytest.raises(DatasetError, match="does not exist"):
        load_conflicts(f"facts:{a},{tmp_path / 'nope.json'}")


def test_truncation_keeps_answer_sentence():
    ctx = ("<P> " + " ".join(f"Filler sentence number {chr(97 + i % 26)}x ." for i in range(30))
           + " The season contained 23 episodes . " + " ".join(f"More filler {chr(97 + i % 26)} ." for i in range(30)) + " </P>")
    t = truncate_context(ctx, "23", 120)
    assert "23 episodes" in t and len(t) <= 120 and "<P>" not in t
    long = "word " * 200 + "Timothy B. Schmit sang it " + "word " * 200
    t = truncate_context(long, "Timothy B. Schmit", 80)
    assert "Timothy B. Schmit" in t and t.startswith("…") and t.endswith("…") and len(t) <= 84
    assert clean("<Table> <Tr> a </Tr>") == "a"


def test_prompts_exclude_demo_groups_and_share_format(data_dir):
    cs = load_nqswap(data_dir / NQ, limit=80)
    ps = build_prompts(cs.examples, n_demos=4)
    assert len(ps.demos) == 4
    demo_groups = {d.group for d in ps.demos}
    assert all(e.group not in demo_groups for e in ps.examples)
    p = ps.sub[0]
    assert p.count("context: ") == 5 and p.endswith("\nanswer:") and p.count("answer:") == 5
    assert ps.closed[0].count("context:") == 0 and ps.closed[0].count("answer:") == 5
    assert ps.sub_contexts[0] in ps.sub[0] and ps.org_contexts[0] in ps.org[0]


def test_grouped_split_no_question_on_both_sides(data_dir):
    cs = load_nqswap(data_dir / NQ, limit=600)
    groups = [e.group for e in cs.examples]
    assert len(set(groups)) < len(groups)  # repeated questions exist, so the test has teeth
    for seed in range(5):
        sp = grouped_split(groups, seed=seed)
        check_disjoint(sp, groups)
        sides = [{groups[i] for i in part} for part in (sp.train, sp.val, sp.test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert sorted(sp.train + sp.val + sp.test) == list(range(len(groups)))
        assert 0.45 < len(sp.train) / len(groups) < 0.75
    bad = grouped_split(groups, seed=0)
    bad.test.append(bad.train[0])
    with pytest.raises(DatasetError, match="two sides"):
        check_disjoint(bad, groups)
    with pytest.raises(DatasetError, match="at least 3"):
        grouped_split(["a", "a", "b"])


def test_source_labels_from_behaviour():
    from conftest import tiny
    from probes.data import ConflictExample
    from probes.labels import answer_key, answer_token, source_labels
    m = tiny()
    ex = [ConflictExample(str(i), str(i), "q", "c", ("Paris",), "c2", ("Rome",)) for i in range(5)]
    paris, rome, lon = answer_token(m, "Paris"), answer_token(m, "Rome"), answer_token(m, "London")
    assert answer_key(m, "Paris") == (paris,)
    # digits follow a bare " " token in this tokenizer: the key runs through the first digit
    k23, k775 = answer_key(m, "23"), answer_key(m, "775")
    assert len(k23) == 2 and k23[0] == k775[0] and k23 != k775
    # sub-context answer, closed-book answer
    pred_sub = [rome, paris, lon, rome, lon]
    pred_closed = [paris, paris, paris, rome, lon]
    lab = source_labels(m, ex, pred_sub, pred_sub, pred_closed)
    assert lab.source == ["context", "memory", "neither", "ambiguous", "memory"]
    assert lab.known == [True, True, True, False, False]
    assert lab.counts["context"] == 1 and lab.counts["memory"] == 2 and lab.counts["memory_and_known"] == 1


def test_greedy_keys_take_a_second_step_after_blank_tokens():
    import torch
    from conftest import tiny
    from probes.features import greedy_keys
    m = tiny()
    prompts = ["question: how many?\nanswer:", "question: who is it?\nanswer:"]
    blank = m.tokenizer(" 23", add_special_tokens=False)["input_ids"][0]
    word = m.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    keys = greedy_keys(m, prompts, [blank, word])
    assert keys[1] == (word,) and len(keys[0]) == 2 and keys[0][0] == blank
    ids = m.tokenize(prompts[0]).input_ids[0].tolist() + [blank]
    direct = m.hf(torch.tensor([ids])).logits[0, -1].argmax()
    assert keys[0][1] == int(direct)
