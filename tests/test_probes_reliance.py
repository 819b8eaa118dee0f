"""probes.reliance: JSD (textbook and the ReDeEP code's scale), PKS and ECS against direct
computations, engine parity, and the context-vs-memory comparison."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny
from probes.reliance import (compare_reliance, context_span, external_context_score, js_divergence,
                             parametric_knowledge_score)

PROMPTS = ["context: The season contained 23 episodes .\nquestion: how many episodes?\nanswer:",
           "context: Paris is the capital of France .\nquestion: capital of France?\nanswer:",
           "context: x y z w v u t s r q p o n m .\nquestion: what?\nanswer:"]
CONTEXTS = ["The season contained 23 episodes .", "Paris is the capital of France .",
            "x y z w v u t s r q p o n m ."]


def test_jsd_textbook_and_redeep_variant():
    a = torch.randn(4, 50)
    assert torch.allclose(js_divergence(a, a), torch.zeros(4), atol=1e-6)
    b = torch.randn(4, 50)
    p, q = a.softmax(-1), b.softmax(-1)
    m = (p + q) / 2
    ref = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(js_divergence(a, b), ref, atol=1e-6)
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a), atol=1e-6)  # symmetric
    far = torch.full((1, 50), -1e4)
    far2 = far.clone()
    far[0, 0] = far2[0, 1] = 1e4
    assert abs(float(js_divergence(far, far2)) - math.log(2)) < 1e-5  # disjoint supports: ln 2
    assert torch.allclose(js_divergence(a, b, variant="redeep"), ref / 50 * 1e6, rtol=1e-4)
    with pytest.raises(ValueError, match="variant"):
        js_divergence(a, b, variant="kl")


def test_pks_equals_direct_logit_lens_jsd():
    m = tiny()
    pks = parametric_knowledge_score(m, PROMPTS, batch_size=2)
    assert pks.shape == (3, m.n_layers) and (pks >= 0).all()
    out = m.run(PROMPTS[1], reads=["resid_mid", "resid_post"], positions=[-1])
    a = m.adapter
    l = 1
    lm, lp = a.unembed(out.cache["resid_mid", l][0, 0]), a.unembed(out.cache["resid_post", l][0, 0])
    p, q = lm.softmax(-1), lp.softmax(-1)
    mm = (p + q) / 2
    ref = 0.5 * (p * (p / mm).log()).sum() + 0.5 * (q * (q / mm).log()).sum()
    assert abs(float(pks[1, l]) - float(ref)) < 1e-5
    # the final layer's "after" distribution is the model's output distribution
    out_logits = m.run(PROMPTS[1]).logits[0]
    assert torch.allclose(a.unembed(out.cache["resid_post", m.n_layers - 1][0, 0]), out_logits, atol=1e-4)


def test_ecs_equals_direct_computation():
    m = tiny()
    spans = [context_span(m, p, c) for p, c in zip(PROMPTS, CONTEXTS)]
    ecs = external_context_score(m, PROMPTS, spans, batch_size=3)  # batched with left padding
    assert ecs.shape == (3, m.n_layers, m.adapter.n_heads)
    j, l, h = 2, 1, 4
    out = m.run(PROMPTS[j], reads=[("attn_pattern", l), ("resid_post", m.n_layers - 1)])
    att = out.cache["attn_pattern", l][0, h, -1]  # keys of the last query (one prompt: no padding)
    s, e = spans[j]
    k = math.ceil(0.1 * (e - s))
    top = att[s:e].topk(k).indices + s
    hid = m.adapter.final_norm(out.cache["resid_post", m.n_layers - 1][0])
    ref = torch.nn.functional.cosine_similarity(hid[top].mean(0), hid[-1], dim=0)
    assert abs(float(ecs[j, l, h]) - float(ref)) < 1e-5
    one = external_context_score(m, PROMPTS[j:j + 1], spans[j:j + 1])
    assert torch.allclose(one[0], ecs[j], atol=1e-5)  # padding does not change it


@pytest.mark.slow  # boots the TransformerLens bridge and nnsight
def test_reliance_same_across_engines():
    res = {}
    for e in ("hf", "transformer_lens", "nnsight"):
        m = tiny(engine=e)
        spans = [context_span(m, p, c) for p, c in zip(PROMPTS, CONTEXTS)]
        res[e] = (parametric_knowledge_score(m, PROMPTS), external_context_score(m, PROMPTS, spans))
    for e in ("transformer_lens", "nnsight"):
        assert torch.allclose(res[e][0], res["hf"][0], atol=1e-5)
        assert torch.allclose(res[e][1], res["hf"][1], atol=1e-4)


def test_compare_reliance_groups_and_saves(tmp_path):
    m = tiny()
    r = compare_reliance(m, PROMPTS, CONTEXTS, ["context", "memory", "context"])
    assert r.pks.shape[0] == 3 and r.comparison["pks_late_sum"]["n_context"] == 2
    assert 0 <= r.comparison["ecs_mean"]["auroc_context_vs_memory"] <= 1
    r.save(tmp_path)
    from probes.reliance import RelianceResult
    back = RelianceResult.load(tmp_path)
    assert torch.allclose(back.pks, r.pks) and back.source == r.source
    r.figure()
    r.figure_ecs()
    none = compare_reliance(m, PROMPTS, CONTEXTS, ["context", "neither", "ambiguous"])
    assert "one group is empty" in none.comparison["pks_late_sum"]["note"]
