"""Attention contributions: exact decomposition of attn_out, DLA, engine parity, figures."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.attention import ContributionResult, attention_contributions, contribution_vectors
from interp.errors import LayerIndexError, SpanNotFoundError

PROMPT = "The Eiffel Tower is located in the city of"
SUBJ = "The Eiffel Tower"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("target", [-1, 3])
def test_contributions_sum_to_attention_output(arch, target):
    m = tiny(arch)
    d = contribution_vectors(m, PROMPT, target)
    n_src = d["target"] + 1
    assert d["vectors"].shape == (m.n_layers, m.adapter.n_heads, n_src, m.adapter.d_model)
    rebuilt = d["vectors"].sum((1, 2)) + d["b_O"]
    scale = d["attn_out"].abs().max()
    assert torch.allclose(rebuilt, d["attn_out"], atol=1e-5 * float(scale)), (rebuilt - d["attn_out"]).abs().max()
    # attention weights over the visible sources sum to one
    assert torch.allclose(d["pattern"].sum(-1), torch.ones(m.n_layers, m.adapter.n_heads), atol=1e-5)


def test_default_model_contributions_sum(default_model):
    d = contribution_vectors(default_model, PROMPT, layers=[0, 14, 29])
    rebuilt = d["vectors"].sum((1, 2)) + d["b_O"]
    assert torch.allclose(rebuilt, d["attn_out"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_final_norm_linearisation_gives_the_logit(arch):
    """DLA convention: the frozen-scale final norm applied to the whole residual is the logit."""
    m = tiny(arch)
    d = contribution_vectors(m, PROMPT)
    fn, bias = m.adapter.final_norm_linear(d["resid_final"])
    W = m.adapter.W_U.float()
    logits = (fn(d["resid_final"]) + bias) @ W
    if m.adapter.b_U is not None:
        logits = logits + m.adapter.b_U
    assert torch.allclose(logits, d["logits"], atol=1e-4)


def test_groups_partition_and_dla_adds_up():
    m = tiny("llama")
    r = attention_contributions(m, PROMPT, subject=SUBJ, answer=" Paris")
    n = len(r.tokens)
    assert r.group_names == ["subject", "rest"]
    assert sorted(r.groups["subject"] + r.groups["rest"]) == list(range(n))
    d = contribution_vectors(m, PROMPT)
    fn, _ = m.adapter.final_norm_linear(d["resid_final"])
    aid = m.encode_target(" Paris")[0]
    total = fn(d["attn_out"] - d["b_O"]) @ m.adapter.W_U[:, aid].float()   # per layer
    assert torch.allclose(r.dla.sum(1), total, atol=1e-5)
    # per-head norms are norms of the pieces whose sums the group norms take
    V = d["vectors"]
    assert torch.allclose(r.head_src, V.norm(dim=-1))
    assert torch.allclose(r.group_norm[:, 0], V[:, :, r.groups["subject"]].sum((1, 2)).norm(dim=-1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_engines_agree(arch):
    res = {e: attention_contributions(tiny(arch, e), PROMPT, subject=SUBJ)
           for e in ("hf", "transformer_lens", "nnsight")}
    for e in ("transformer_lens", "nnsight"):
        for f in ("head_src", "layer_src", "group_norm", "dla", "pattern"):
            assert torch.allclose(getattr(res[e], f), getattr(res["hf"], f), atol=1e-4), (e, f)


def test_result_roundtrip_and_figures(tmp_path):
    m = tiny("llama")
    r = attention_contributions(m, "Information is below: Paris is big. Complete: The Eiffel Tower is in",
                                subject=SUBJ, context="Paris is big.")
    assert r.group_names == ["subject", "context", "rest"]
    r.save(tmp_path)
    back = ContributionResult.load(tmp_path)
    assert torch.equal(back.head_group, r.head_group) and back.groups == r.groups
    assert back.figure("tokens").data[0].z.shape == (m.n_layers, len(r.tokens))
    assert back.figure("heads", "context").data[0].z.shape == (m.adapter.n_heads, m.n_layers)
    assert back.figure("dla").data[0].z.shape == (m.adapter.n_heads, m.n_layers)


def test_bad_input():
    m = tiny("llama")
    with pytest.raises(SpanNotFoundError, match="not found"):
        attention_contributions(m, PROMPT, subject="Big Ben")
    with pytest.raises(LayerIndexError, match="target position"):
        attention_contributions(m, PROMPT, target=99)
    with pytest.raises(SpanNotFoundError, match="after the target"):
        attention_contributions(m, PROMPT, subject="city", target=2)
