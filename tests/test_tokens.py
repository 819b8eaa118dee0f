"""Tokens, spans, padding and the one BOS policy."""

import pytest
import torch

from conftest import tiny
from interp.errors import LayerIndexError, PromptError, SpanNotFoundError
from interp.lens import logit_lens, lens_probs


def test_bos_policy_same_tokens_in_every_engine(default_engines):
    prompt = "The Eiffel Tower is located in the city of"
    ours = default_engines["hf"].tokenize(prompt).token_ids(0)
    assert ours[0] != default_engines["hf"].tokenizer.bos_token_id  # SmolLM2 adds no BOS; neither do we
    bridge = default_engines["transformer_lens"].engine.bridge
    assert bridge.to_tokens(prompt)[0].tolist() == ours          # bridge's default BOS switched off
    nm = default_engines["nnsight"]
    assert nm.tokenize(prompt).token_ids(0) == ours
    # and the three engines give the same probabilities (a prepended BOS would change them a lot)
    p = [default_engines[e].next_token_probs(prompt)[0] for e in ("hf", "transformer_lens", "nnsight")]
    assert (p[0] - p[1]).abs().max() < 1e-5 and (p[0] - p[2]).abs().max() < 1e-5


def test_find_span_and_occurrence():
    m = tiny()
    p = "Paris is nice. I love Paris"
    s0 = m.token_span(p, "Paris")
    s1 = m.token_span(p, "Paris", occurrence=1)
    assert s0[0] == 0 and s1[0] > s0[0]
    toks = m.to_str_tokens(p)
    assert "".join(toks[s1[0]:s1[1]]).strip() == "Paris"
    with pytest.raises(SpanNotFoundError, match="does not occur"):
        m.token_span(p, "London")
    with pytest.raises(SpanNotFoundError, match="occurs 2 time"):
        m.token_span(p, "Paris", occurrence=2)


def test_bad_prompts():
    m = tiny()
    with pytest.raises(PromptError, match="empty"):
        m.tokenize("   ")
    with pytest.raises(PromptError, match="no prompts"):
        m.tokenize([])
    with pytest.raises(PromptError, match="context is 128"):
        m.tokenize("word " * 400)
    b = m.tokenize(["a b c", "a"])
    with pytest.raises(LayerIndexError, match="position 3 out of range"):
        b.abs_pos(0, 3)


@pytest.mark.parametrize("engine", ["hf", "transformer_lens", "nnsight"])
def test_batched_padded_equals_single(engine):
    m = tiny("llama", engine)
    prompts = ["The cat sat on the mat because it was warm", "Hello", "A much longer prompt here"]
    batched = m.run(prompts, reads=["resid_post", "attn_out"], positions=[-1, 0])
    for i, p in enumerate(prompts):
        single = m.run(p, reads=["resid_post", "attn_out"], positions=[-1, 0])
        assert (batched.logits[i] - single.logits[0]).abs().max() < 1e-4
        for k in single.cache.keys():
            assert (batched.cache[k][i] - single.cache[k][0]).abs().max() < 1e-4


def test_right_padding_also_addresses_positions():
    m = tiny("gpt2")
    prompts = ["one two three four", "five"]
    left = m.run(m.tokenize(prompts, padding_side="left"), reads="resid_post", positions=[-1])
    right = m.run(m.tokenize(prompts, padding_side="right"), reads="resid_post", positions=[-1])
    assert (left.logits - right.logits).abs().max() < 1e-4
    assert (left.cache.stack("resid_post") - right.cache.stack("resid_post")).abs().max() < 1e-4


def test_lens_batched_equals_single_and_last_layer_is_the_model(default_model):
    prompts = ["The Eiffel Tower is located in the city of", "The capital of Japan is"]
    batched = lens_probs(default_model, prompts)             # last position, padded batch
    for i, p in enumerate(prompts):
        single = lens_probs(default_model, [p], positions=[-1])
        assert (batched[i] - single[0]).abs().max() < 1e-5
    final = default_model.next_token_probs(prompts)
    assert (batched[:, -1, 0] - final).abs().max() < 1e-5
    res = logit_lens(default_model, prompts[0], target=" Paris")
    assert res.top_tokens[-1][-1] == " Paris" and abs(float(res.target_probs[-1, -1]) - 0.70) < 0.02
