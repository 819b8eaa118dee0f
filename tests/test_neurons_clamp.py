"""Neuron clamping (forward + generation), under every engine."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.errors import LayerIndexError
from interp.neurons.clamp import clamp_effect, clamp_generate, generate_greedy

ENGINES = ("hf", "transformer_lens", "nnsight")
PROMPTS = ["The Eiffel Tower is in the city of", "My favourite animal is the"]


@pytest.mark.slow
def test_clamp_engines_agree_and_match_a_weight_edit():
    res = {e: clamp_effect(tiny("llama", e), PROMPTS, [(1, 5), (2, 7)], [0.0, 3.0], " Paris") for e in ENGINES}
    for e in ENGINES[1:]:
        torch.testing.assert_close(res[e].p_clamped, res["hf"].p_clamped, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(res[e].p_clean, res["hf"].p_clean, rtol=1e-4, atol=1e-7)
    # clamping to 0 at every position == removing the neurons' value vectors from the weights
    m = tiny("llama")
    with torch.no_grad():
        m.adapter.W_out(1)[5].zero_()
        m.adapter.W_out(2)[7].zero_()
    ref = m.next_token_probs(PROMPTS)[:, res["hf"].target_id]
    torch.testing.assert_close(res["hf"].p_clamped[0], ref, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(res["hf"].p_clamped[1], res["hf"].p_clean)


@pytest.mark.slow
def test_clamp_to_own_activation_changes_nothing_and_positions_subset():
    m = tiny("llama")
    r = clamp_effect(m, PROMPTS[0], [(0, 3)], 1.0, " Paris", positions=[-1])
    act = float(r.clean_activation[0, 0])
    same = clamp_effect(m, PROMPTS[0], [(0, 3)], act, " Paris", positions=[-1])
    torch.testing.assert_close(same.p_clamped[0], same.p_clean, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_clamped_generation_engines_agree_and_clean_equals_hf_generate():
    outs = {e: clamp_generate(tiny("llama", e), PROMPTS[1], [(2, 7)], 8.0, max_new_tokens=4) for e in ENGINES}
    for e in ENGINES[1:]:
        assert outs[e]["clamped_ids"] == outs["hf"]["clamped_ids"]
        assert outs[e]["clean_ids"] == outs["hf"]["clean_ids"]
    m = tiny("llama")
    enc = m.tokenizer(PROMPTS[1], return_tensors="pt")
    ref = m.hf.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=m.tokenizer.eos_token_id)
    assert outs["hf"]["clean_ids"] == ref[0, enc["input_ids"].shape[1]:].tolist()
    assert generate_greedy(m, PROMPTS[1], 3, neurons=[(2, 7)], value=8.0) == outs["hf"]["clamped_ids"][:3]


def test_clamp_bad_input():
    m = tiny("llama")
    with pytest.raises(LayerIndexError, match="layer 3 out of range"):
        clamp_effect(m, "hi there", [(3, 0)], 1.0, " Paris")
    with pytest.raises(LayerIndexError, match="neuron 96 out of range"):
        clamp_effect(m, "hi there", [(0, 96)], 1.0, " Paris")


@pytest.mark.slow
def test_default_model_clamp_raises_decoded_top_token(default_model):
    """A value vector whose top token is ' but' (L20 N1090): clamping raises p(' but')."""
    from interp.neurons.decode import decode_neuron
    top = decode_neuron(default_model, 20, 1090, "out", k=1)["top_tokens"][0]
    r = clamp_effect(default_model, "My favourite word is", [(20, 1090)], [5.0, 10.0], top)
    assert r.p_clamped[1, 0] > 100 * r.p_clean[0]
    assert r.p_clamped[1, 0] > r.p_clamped[0, 0] > r.p_clean[0]
