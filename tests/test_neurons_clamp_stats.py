"""Neuron clamping (forward + generation) and streamed corpus statistics, under every engine."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny
from interp.errors import DatasetError, LayerIndexError
from interp.neurons.clamp import clamp_effect, clamp_generate, generate_greedy
from interp.neurons.stats import iter_texts, neuron_stats
from interp.sweep import SweepConfigMismatch

ENGINES = ("hf", "transformer_lens", "nnsight")
PROMPTS = ["The Eiffel Tower is in the city of", "My favourite animal is the"]


def _texts(data_dir, n=3):
    recs = json.loads((data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json").read_text())
    return [r["wikipedia_content"][:600] for r in recs[:n]]


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


def _direct_stats(model, texts, threshold, max_len):
    """Everything in memory at once: the reference the streamed statistics must equal."""
    from interp.neurons.stats import iter_windows
    wins = list(iter_windows(model.tokenizer, texts, max_len))
    acts, pos, ids = [], [], []
    for w in wins:
        out = model.run(_one(model, w), reads="mlp_post", logits="none")
        acts.append(out.cache.stack("mlp_post")[:, 0])
        pos.append(torch.arange(len(w)))
        ids.append(torch.tensor(w))
    a, p = torch.cat(acts, 1), torch.cat(pos)
    active = a.abs() > threshold
    return a, p, torch.cat(ids), active


def _one(model, w):
    from interp.neurons.clamp import _ids_batch
    return _ids_batch(model.tokenizer, [w])


@pytest.mark.slow
def test_stats_equal_a_direct_computation(data_dir):
    m = tiny("llama")
    texts = _texts(data_dir)
    st = neuron_stats(m, texts, threshold=0.05, max_len=32, batch_size=3, n_pos_bins=32)
    a, p, ids, active = _direct_stats(m, texts, 0.05, 32)
    assert st.n_tokens == a.shape[1]
    torch.testing.assert_close(st.freq, active.float().mean(1))
    assert torch.equal(st.dead, ~active.any(1))
    torch.testing.assert_close(st.mean, a.mean(1), rtol=1e-4, atol=1e-6)
    # position statistics over positions >= 1; with one bin per position eta^2 is the exact ratio
    keep = p > 0
    x, pp = a[:, keep], p[keep].float()
    xc = x - x.mean(1, keepdim=True)
    corr = (xc * (pp - pp.mean())[:, None]).mean(1) / (x.std(1, unbiased=False) * pp.std(unbiased=False))
    torch.testing.assert_close(st.pos_corr, corr, rtol=1e-3, atol=1e-4)
    means = torch.stack([x[:, pp == q].mean(1) for q in pp.unique()], -1)
    counts = torch.stack([(pp == q).sum() for q in pp.unique()]).float()
    between = (counts * (means - x.mean(1)[..., None]) ** 2).sum(-1)
    torch.testing.assert_close(st.pos_eta2, between / (xc ** 2).sum(1), rtol=1e-3, atol=1e-4)
    assert float(st.detector_share.max()) <= 1.0 + 1e-6


def test_stats_token_detector_and_positional_are_found():
    m = tiny("llama")
    tid = m.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    from interp.neurons.stats import RunningNeuronStats, finalize
    rs = RunningNeuronStats(1, 4, n_pos_bins=8, max_len=64, n_buckets=64, threshold=0.5, mode="abs")
    ids = torch.tensor([tid, 5, 6, tid, 7, tid, 8, 9] * 8)
    pos = torch.arange(64)
    acts = torch.zeros(1, 64, 4)
    acts[0, :, 0] = (ids == tid).float()  # token detector
    acts[0, :, 1] = pos.float() / 10  # positional
    acts[0, :, 2] = torch.randn(64).abs() * 0.1  # below threshold: dead
    acts[0, :, 3] = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3  # broad
    rs.update(acts, pos, ids)
    st = finalize(rs, model="synthetic", layers=[0], n_tokens=64, detector_top=1, detector_share=0.9, min_active=5,
                  positional_eta2=0.5, engine="hf")
    assert st.token_detector[0].tolist() == [True, False, False, False]
    assert int(st.detector_token[0, 0]) == tid
    assert st.positional[0, 1] and not st.positional[0, 3]
    assert st.dead[0].tolist() == [False, False, True, False]
    assert float(st.pos_corr[0, 1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_stats_engines_agree(data_dir):
    texts = _texts(data_dir, 1)
    sts = [neuron_stats(tiny("llama", e), texts, threshold=0.05, max_len=32, max_tokens=96) for e in ENGINES]
    for s in sts[1:]:
        torch.testing.assert_close(s.freq, sts[0].freq)
        torch.testing.assert_close(s.pos_eta2, sts[0].pos_eta2, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_stats_resume_equals_one_pass(tmp_path, data_dir):
    m = tiny("llama")
    texts = _texts(data_dir, 2)
    kw = dict(threshold=0.05, max_len=32, batch_size=2, max_tokens=256)
    full = neuron_stats(m, texts, **kw)
    part = neuron_stats(m, texts, checkpoint_dir=tmp_path, save_every=1, max_batches=2, **kw)
    assert part.n_tokens < full.n_tokens
    resumed = neuron_stats(m, texts, checkpoint_dir=tmp_path, save_every=1, **kw)
    assert resumed.n_tokens == full.n_tokens
    torch.testing.assert_close(resumed.freq, full.freq)
    torch.testing.assert_close(resumed.pos_eta2, full.pos_eta2)
    with pytest.raises(SweepConfigMismatch, match="threshold"):
        neuron_stats(m, texts, checkpoint_dir=tmp_path, **{**kw, "threshold": 0.2})
    path = tmp_path / "st"
    resumed.save(path)
    from interp.neurons.stats import NeuronStats
    back = NeuronStats.load(path)
    assert torch.equal(back.dead, resumed.dead) and back.per_layer == resumed.per_layer


def test_corpus_formats_and_empty_corpus(tmp_path, data_dir):
    path = data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json"
    texts = list(iter_texts(path))
    assert len(texts) == 10 and texts[0].startswith("Poland")
    import datasets
    ds = datasets.Dataset.from_dict({"text": ["a b c d e f", "g h"]})
    assert list(iter_texts(ds)) == ["a b c d e f", "g h"]
    m = tiny("llama")
    with pytest.raises(DatasetError, match="corpus is empty"):
        neuron_stats(m, [])
    with pytest.raises(DatasetError, match="corpus is empty"):
        neuron_stats(m, ["", "   "])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match="corpus is empty"):
        neuron_stats(m, tmp_path / "empty.txt")
    with pytest.raises(DatasetError, match="does not exist"):
        list(iter_texts(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="no text field"):
        list(iter_texts([{"question": "x"}]))


@pytest.mark.slow
def test_default_model_clamp_raises_decoded_top_token(default_model):
    """A value vector whose top token is ' but' (L20 N1090): clamping raises p(' but')."""
    from interp.neurons.decode import decode_neuron
    top = decode_neuron(default_model, 20, 1090, "out", k=1)["top_tokens"][0]
    r = clamp_effect(default_model, "My favourite word is", [(20, 1090)], [5.0, 10.0], top)
    assert r.p_clamped[1, 0] > 100 * r.p_clean[0]
    assert r.p_clamped[1, 0] > r.p_clamped[0, 0] > r.p_clean[0]
