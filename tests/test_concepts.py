"""Concept vectors: finding, lookup, temporary edits, causal check, intrinsic unlearning metrics."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.concepts.unlearning import ablate_copy, gradient_ascent_unlearn, intrinsic_compare, needle_unlearn
from interp.concepts.vectors import (causal_check, concept_terms, concept_vector, edited_value_vectors,
                                     find_concept_vectors, load_concepts, rouge_l)
from interp.datasets import Fact
from interp.errors import CheckpointMismatchError, DatasetError, LayerIndexError


def _planted(seed=0):
    """A tiny model whose value vector (2, 11) writes the ' Japan' + ' Japanese' unembedding directions."""
    m = tiny("llama", seed=seed)
    a = m.adapter
    ids = [m.encode_target(w)[0] for w in (" Japan", " Japanese", " Tokyo")]
    with torch.no_grad():
        a.W_out(2)[11].copy_(a.W_U[:, ids].sum(-1) * 5)
    return m, ids


@pytest.mark.slow
def test_find_ranks_the_planted_vector_first_and_scoring_is_replaceable():
    m, ids = _planted()
    res = find_concept_vectors(m, "Japan", terms=["japan", "japanese", "tokyo"], k=20)
    assert res.candidates[0]["layer"] == 2 and res.candidates[0]["index"] == 11
    assert {" Japan", " Japanese", " Tokyo"} <= set(res.candidates[0]["matched"])
    assert res.candidates[0]["matched_ranks"][:3] == [0, 1, 2]
    custom = find_concept_vectors(m, "Japan", k=20, score_fn=lambda toks, terms: float(toks[0] == " Tokyo"))
    assert all(c["score"] == 1.0 for c in custom.candidates)
    assert all(c["top_tokens"][0] == " Tokyo" for c in custom.candidates)
    assert concept_terms("Culture of Latin America") == ["culture", "latin", "america"]


def test_concept_with_no_matching_vectors_is_an_empty_result():
    m = tiny("llama")
    res = find_concept_vectors(m, "Zqxwvy Blorptastic", k=5)
    assert res.empty and res.candidates == []
    assert "no value vector" in res.message and "zqxwvy" in res.message


def test_lookup_and_edit_restores_weights():
    m, ids = _planted()
    info = concept_vector(m, 2, 11, k=3)
    assert info["top_ids"][0] in ids and info["norm"] > 0
    w = m.adapter.down[2].weight.detach().clone()
    with edited_value_vectors(m, [(2, 11)], mode="zero"):
        assert float(m.adapter.W_out(2)[11].abs().sum()) == 0.0
    assert torch.equal(m.adapter.down[2].weight, w)
    with pytest.raises(RuntimeError, match="boom"):
        with edited_value_vectors(m, [(2, 11)], mode="noise", sigma=1.0):
            assert not torch.equal(m.adapter.down[2].weight, w)
            raise RuntimeError("boom")
    assert torch.equal(m.adapter.down[2].weight, w)  # restored on error too
    with pytest.raises(LayerIndexError, match="layer 7 out of range"):
        concept_vector(m, 7, 0)
    with pytest.raises(LayerIndexError, match="neuron 96 out of range"):
        concept_vector(m, 0, 96)


@pytest.mark.slow
def test_causal_check_engines_agree_and_zeroing_equals_clamp():
    facts = [Fact("The capital of Japan is", "Japan", "Tokyo"), Fact("Sushi comes from", "Sushi", "Japan")]
    other = [Fact("The Eiffel Tower is in", "Eiffel Tower", "Paris")]
    out = {}
    for e in ("hf", "nnsight"):
        m, _ = _planted()
        if e != "hf":
            from interp.model import Model
            m = Model(m.hf, m.tokenizer, e)
        out[e] = causal_check(m, [(2, 11)], concept="Japan", related_facts=facts, unrelated_facts=other, mode="zero")
    assert out["hf"].facts == out["nnsight"].facts
    # zeroing the vector == clamping its neuron to 0 everywhere (same numbers, two mechanisms)
    from interp.neurons.clamp import clamp_effect
    m, _ = _planted()
    c = clamp_effect(m, [f.prompt for f in facts], [(2, 11)], 0.0, " Tokyo")
    with edited_value_vectors(m, [(2, 11)], mode="zero"):
        p = m.next_token_probs([f.prompt for f in facts])[:, c.target_id]
    torch.testing.assert_close(c.p_clamped[0], p, rtol=1e-4, atol=1e-8)


def test_intrinsic_metrics_and_shape_mismatch():
    m, _ = _planted()
    same = intrinsic_compare(m, m, [(2, 11)], k=10)[0]
    assert same["cosine"] == pytest.approx(1.0) and same["rel_l2"] == 0 and same["jaccard"] == 1.0
    ab = ablate_copy(m, [(2, 11)])
    row = intrinsic_compare(m, ab, [(2, 11)], k=10)[0]
    assert row["rel_l2"] == pytest.approx(1.0) and row["cosine"] == pytest.approx(0.0)
    assert float(m.adapter.W_out(2)[11].norm()) > 0  # the original is untouched
    with pytest.raises(CheckpointMismatchError, match="n_layers: 3 vs 2"):
        intrinsic_compare(m, tiny("llama", n_layers=2), [(0, 0)])


@pytest.mark.slow
def test_gradient_ascent_and_needle_move_what_they_should():
    m, _ = _planted()
    texts = ["Japan is an island country in East Asia. Tokyo is the capital of Japan. " * 4]
    w0 = {k: v.clone() for k, v in m.hf.state_dict().items()}
    ga, losses = gradient_ascent_unlearn(m, texts, steps=4, lr=1e-3)
    assert losses[-1] > losses[0]
    assert all(torch.equal(v, m.hf.state_dict()[k]) for k, v in w0.items())  # original untouched
    nd, _ = needle_unlearn(m, texts, (2, 11), steps=3, lr=1e-2)
    a0, a1 = m.adapter, nd.adapter
    changed = (a1.down[2].weight != a0.down[2].weight).any(0)
    assert changed.nonzero().flatten().tolist() == [11]  # only the concept vector's column moved
    assert torch.equal(a1.W_in(2), a0.W_in(2))


def test_dataset_helpers(data_dir, tmp_path):
    recs = load_concepts(data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json")
    assert recs[0]["Concept"] == "Poland" and (recs[0]["Layer"], recs[0]["Dim"]) == (23, 743)
    assert len(recs[0]["QA"]) == 10 and len(recs[0]["unrelated_QA"]) == 50
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="not a ConceptVectors file"):
        load_concepts(tmp_path / "x.json")
    assert rouge_l("the cat sat", "the cat sat") == 1.0 and rouge_l("a b", "c d") == 0.0
    assert rouge_l("a b c d", "a c") == pytest.approx(2 * (2 / 4) * 1.0 / (2 / 4 + 1.0))
