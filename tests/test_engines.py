"""Engine parity: the plain HF forward, the hf hook engine, TransformerLens and nnsight agree."""

import pytest
import torch

from conftest import tiny, tiny_hf

ENGINES = ("hf", "transformer_lens", "nnsight")
ALL_READS = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post",
             "attn_q", "attn_k", "attn_v", "attn_z", "head_out", "attn_pattern"]
PROMPTS = ["The Eiffel Tower is located in the city of", "Rome is the capital of", "Hi"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_engines_match_plain_forward_and_each_other(arch):
    ref_hf = tiny_hf(arch)
    outs = {e: tiny(arch, e).run(PROMPTS, reads=ALL_READS) for e in ENGINES}
    base = outs["hf"]
    # plain HF forward, one prompt at a time, no hooks, no padding
    for i, p in enumerate(PROMPTS):
        ids = base.batch.select([i])
        with torch.no_grad():
            plain = ref_hf(input_ids=torch.tensor([ids.token_ids(0)])).logits[0, -1]
        for e in ENGINES:
            assert (outs[e].logits[i] - plain).abs().max() <= 1e-4, (e, i)
    for e in ENGINES[1:]:
        assert set(outs[e].cache.keys()) == set(base.cache.keys())
        for k in base.cache.keys():
            a, b = outs[e].cache[k], base.cache[k]
            mask = base.batch.attention_mask.bool()
            if k[0] == "attn_pattern":
                sel = mask[:, None, :, None] & mask[:, None, None, :]
                a, b = a * sel, b * sel
            else:
                a, b = a[mask], b[mask]
            assert (a - b).abs().max() <= 1e-4, (e, k)


def test_default_model_engines_agree_on_logits_and_sites(default_engines):
    hf = default_engines["hf"]
    reads = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "attn_z", "attn_pattern"]
    base = hf.run(PROMPTS[:2], reads=reads, positions=[-1, -2])
    ids = hf.tokenize(PROMPTS[0]).input_ids
    with torch.no_grad():
        plain = hf.hf(input_ids=ids).logits[0, -1]
    assert (base.logits[0] - plain).abs().max() <= 1e-4
    for e in ("transformer_lens", "nnsight"):
        out = default_engines[e].run(PROMPTS[:2], reads=reads, positions=[-1, -2])
        assert (out.logits - base.logits).abs().max() <= 1e-4, e
        for k in base.cache.keys():
            assert (out.cache[k] - base.cache[k]).abs().max() <= 1e-4, (e, k)


def test_default_model_knows_paris(default_model):
    p = default_model.next_token_probs("The Eiffel Tower is located in the city of")[0]
    tid, _ = default_model.encode_target(" Paris")
    assert int(p.argmax()) == tid and 0.6 < float(p[tid]) < 0.8


def test_head_out_sums_to_attn_out():
    m = tiny("llama")
    out = m.run(PROMPTS, reads=["head_out", "attn_out"], layers=[1], positions=[-1])
    total = out.cache["head_out", 1].sum(-2) + m.adapter.b_O(1)
    assert torch.allclose(total, out.cache["attn_out", 1], atol=1e-5)


def test_resid_mid_is_pre_plus_attn_and_post_is_mid_plus_mlp():
    m = tiny("gpt2")
    c = m.run(PROMPTS, reads=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]).cache
    for l in range(m.n_layers):
        assert torch.allclose(c["resid_pre", l] + c["attn_out", l], c["resid_mid", l], atol=1e-5)
        assert torch.allclose(c["resid_mid", l] + c["mlp_out", l], c["resid_post", l], atol=1e-5)
