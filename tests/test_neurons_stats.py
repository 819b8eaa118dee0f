"""Corpus neuron statistics (Voita et al. 2023): exact against a direct reference, planted detectors,
a killed and resumed run equal to one pass, threshold rules, corpus errors."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from conftest import default_tokenizer, tiny, tiny_hf
from interp.errors import DatasetError, InterpError, SiteError
from interp.neurons.stats import (ENERGY_CLIP, RARE_FREQ, SIGNALS, Grid, NeuronStats, corpus_windows, iter_texts,
                                  neuron_stats)
from interp.sweep import SweepConfigMismatch


def _texts(data_dir, n=3, chars=700):
    recs = json.loads((data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json").read_text())
    return [r["wikipedia_content"][:chars] for r in recs[:n]]


def _reference(hf, windows):
    """Every window alone through the plain HF model; gate, up and post read by torch hooks on its modules."""
    rec: dict = {}
    hooks = []
    for l, block in enumerate(hf.model.layers):
        hooks.append(block.mlp.act_fn.register_forward_hook(lambda m, i, o, l=l: rec.__setitem__(("gate", l), o)))
        hooks.append(block.mlp.up_proj.register_forward_hook(lambda m, i, o, l=l: rec.__setitem__(("up", l), o)))
        hooks.append(block.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, l=l: rec.__setitem__(("post", l), a[0])))
    vals = {(s, l): [] for s in SIGNALS for l in range(len(hf.model.layers))}
    try:
        with torch.no_grad():
            for w in windows:
                hf(input_ids=torch.tensor([w]))
                for k in vals:
                    vals[k].append(rec[k][0])
    finally:
        for h in hooks:
            h.remove()
    pos = torch.cat([torch.arange(len(w)) for w in windows])
    ids = torch.cat([torch.tensor(w) for w in windows])
    prev = torch.cat([torch.tensor([-1] + w[:-1]) for w in windows])
    return {k: torch.cat(v) for k, v in vals.items()}, pos, ids, prev


def _energy_tau(x, eps, grid):
    """The energy rule by brute force: the largest edge whose sub-edge entries carry ≤ eps of Σx², with the
    entries at or above the bin of the top ENERGY_CLIP fraction counted at that bin's lower edge."""
    e = grid.edges()
    a = x.abs().flatten().double()
    clip = max(edge for edge in e if (a >= edge).sum() >= ENERGY_CLIP * len(a))
    tot = (a[a < clip] ** 2).sum() + (a >= clip).sum() * clip ** 2
    best = e[1]
    for edge in e[1:]:
        if (a[a < edge] ** 2).sum() <= eps * tot:
            best = edge
    return float(best)


def _shares(x, ids, prev, pos, k):
    """Top-k unigram and bigram energy shares of every neuron with Python dictionaries (positions >= 1)."""
    keep = pos > 0
    x, ids, prev = x[keep].double(), ids[keep].tolist(), prev[keep].tolist()
    uni_s, bi_s = [], []
    for n in range(x.shape[1]):
        uni, bi = defaultdict(float), defaultdict(float)
        for t, (u, p) in enumerate(zip(ids, prev)):
            e = float(x[t, n]) ** 2
            uni[u] += e
            bi[(p, u)] += e
        tot = sum(uni.values())
        uni_s.append(sum(sorted(uni.values())[-k:]) / tot)
        bi_s.append(sum(sorted(bi.values())[-k:]) / tot)
    return torch.tensor(uni_s), torch.tensor(bi_s)


def _eta2(x, pos):
    keep = pos > 0
    x, p = x[keep].double(), pos[keep]
    mu = x.mean(0)
    between = sum((p == q).sum() * (x[p == q].mean(0) - mu) ** 2 for q in p.unique())
    return between / ((x - mu) ** 2).sum(0)


def test_stats_equal_a_direct_reference(data_dir):
    m = tiny("llama")
    texts = _texts(data_dir)
    wins, _ = corpus_windows(m.tokenizer, texts, max_len=32)
    vals, pos, ids, prev = _reference(tiny_hf("llama"), wins)
    cvals, _, _, _ = _reference(tiny_hf("llama"), wins[::3])  # gate and up are read on the calibration sample
    # a low detector cut makes every neuron an exact candidate, so every share is compared
    st = neuron_stats(m, texts, max_len=32, batch_size=3, detector_share=0.02, calib_every=3)
    assert st.n_tokens == len(ids) == st.corpus["n_tokens"] and st.share_exact.all()
    assert st.signal_tokens == {"gate": len(cvals["gate", 0]), "up": len(cvals["gate", 0]), "post": len(ids)}
    grid = Grid()
    for s, name in enumerate(st.signals):
        for l in range(3):
            x = vals[name, l] if name == "post" else cvals[name, l].clamp_min(0) if name == "gate" else cvals[name, l]
            tau = _energy_tau(x, 0.01, grid)
            assert float(st.tau[s, l]) == tau
            active = x.abs() >= tau
            assert torch.equal(st.freq[s, l], (active.sum(0).double() / len(x)).float())
            assert torch.equal(st.max_abs[s, l], x.abs().amax(0))
            torch.testing.assert_close(st.mean[s, l], x.mean(0), rtol=1e-5, atol=1e-6)
            if name == "post":
                assert torch.equal(st.dead[l], ~active.any(0))
                assert torch.equal(st.rare[l], active.float().mean(0) < RARE_FREQ)
                torch.testing.assert_close(st.eta2[l], _eta2(x, pos).float(), rtol=1e-4, atol=1e-5)
                uni, bi = _shares(x, ids, prev, pos, 3)
                torch.testing.assert_close(st.uni_share[l], uni.float(), rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(st.bi_share[l], bi.float(), rtol=1e-5, atol=1e-6)
                assert torch.equal(st.token_detector[l], uni.float() >= 0.02)
    # with a real cut the hashed bound prunes; the classification stays exact, every bound is a bound
    cut = float(st.uni_share.quantile(0.97))
    pr = neuron_stats(m, texts, max_len=32, batch_size=3, detector_share=cut, calib_every=3)
    assert 0 < int(pr.share_exact.sum()) < pr.share_exact.numel()
    assert torch.equal(pr.token_detector, st.uni_share >= cut)
    assert torch.equal(pr.bigram_detector, st.bi_share >= cut)
    ex = pr.share_exact
    torch.testing.assert_close(pr.uni_share[ex], st.uni_share[ex])
    assert (pr.uni_share[~ex] >= st.uni_share[~ex] - 1e-6).all() and (pr.uni_share[~ex] < cut).all()
    det = {(d["layer"], d["neuron"]) for d in pr.detectors}
    assert det == {tuple(x) for x in (pr.token_detector | pr.bigram_detector).nonzero().tolist()}


def test_mlp_gate_up_equals_the_engines_mlp_post_bit_for_bit():
    m = tiny("llama")
    out = m.run(["The Eiffel Tower is in Paris", "Hi"], reads=["resid_mid", "mlp_post"], logits="none")
    for l in range(3):
        g, u = m.adapter.mlp_gate_up(l, out.cache["resid_mid", l])
        assert torch.equal(g * u, out.cache["mlp_post", l])
    with pytest.raises(SiteError, match="not gated"):
        tiny("gpt2").adapter.mlp_gate_up(0, out.cache["resid_mid", 0])


# ---------------------------------------------------------------------- planted detectors
WORDS = [" the", " sat", " on", " mat", " dog", " blue", " big", " a", " ran", " fox", " and"]
A, B = " red", " cat"


class _PlantedModel:
    """Stands in for a Model: one layer of four neurons whose mlp_post is computed from the token ids.

    Neuron 0 fires only on B after A (a bigram detector), neuron 1 on B after anything (a token
    detector), neuron 2 is broad noise, neuron 3 follows the position.  Neuron 0's value vector is
    minus B's unembedding: it detects B and suppresses it.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.name, self.engine_name, self.device = tokenizer, "planted", "hf", torch.device("cpu")
        self.a, self.b = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (A, B))
        V, d = len(tokenizer), 64
        g = torch.Generator().manual_seed(0)
        W_U = torch.randn(d, V, generator=g)
        W_out = torch.randn(4, d, generator=g)
        W_out[0] = -W_U[:, self.b]
        self.adapter = SimpleNamespace(n_layers=1, d_mlp=4, gate=None, model_type="planted", vocab_size=V,
                                       check_layer=lambda l: l, W_out=lambda l: W_out, W_U=W_U, W_E=W_U.T)

    def run(self, batch, reads, layers, logits, max_rows, cache_device):
        ids, mask = batch.input_ids, batch.attention_mask.bool()
        prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], 1)
        pos = batch.position_ids.float()
        g = torch.Generator().manual_seed(int(ids.sum()))
        noise = torch.randn(*ids.shape, 4, generator=g) * 0.05
        a = noise.clone()
        a[..., 0] += 4.0 * ((prev == self.a) & (ids == self.b))
        a[..., 1] += 3.0 * (ids == self.b)
        a[..., 2] = torch.randn(*ids.shape, generator=g)
        a[..., 3] += torch.sin(pos / 5.0) * 2
        return SimpleNamespace(cache={("mlp_post", 0): a * mask[..., None]})


def _planted_texts(n=40, length=60, seed=0):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = []
        while len(words) < length:
            r = rng.random()
            words += [A, B] if r < 0.08 else [rng.choice(WORDS), B] if r < 0.3 else [rng.choice(WORDS)]
        texts.append("".join(words))
    return texts


def test_planted_bigram_detector_is_found_and_told_from_a_token_detector():
    m = _PlantedModel(default_tokenizer())
    st = neuron_stats(m, _planted_texts(), max_len=32, batch_size=4, calib_every=5)
    assert st.signals == ["post"]
    assert st.bigram_detector[0].tolist() == [True, False, False, False]
    assert st.token_detector[0].tolist() == [True, True, False, False]
    assert float(st.bi_share[0, 0]) > 0.95 and float(st.bi_share[0, 1]) < 0.5
    assert st.positional[0].tolist() == [False, False, False, True]
    d0 = next(d for d in st.detectors if d["neuron"] == 0)
    assert d0["top_bigrams"][0]["text"] == A + B and d0["trigger"] == B
    assert d0["unembed_pct"] == 0.0  # its value vector is minus B's unembedding: B is the most suppressed token
    d1 = next(d for d in st.detectors if d["neuron"] == 1)
    assert d1["top_unigrams"][0]["text"] == B and d1["top_unigrams"][0]["share"] > 0.95


def test_a_detector_the_calibration_misses_is_caught_by_the_top_up_pass():
    m = _PlantedModel(default_tokenizer())
    rng = random.Random(1)
    texts = ["".join(rng.choice(WORDS) for _ in range(128))] + _planted_texts(12)
    # the calibration sees one window, without B: neither detector can be a candidate
    st = neuron_stats(m, texts, max_len=128, batch_size=2, calib_every=1000, detector_share=0.9)
    assert st.search["n_topup"] >= 2 and st.search["n_unresolved"] == 0
    assert st.bigram_detector[0, 0] and st.token_detector[0, 1]
    # without the top-up pass they are reported unresolved, not counted as detectors
    no = neuron_stats(m, texts, max_len=128, batch_size=2, calib_every=1000, detector_share=0.9, top_up=False)
    assert no.search["n_topup"] == 0 and no.search["n_unresolved"] == st.search["n_topup"]
    assert not no.bigram_detector[0, 0] and not no.token_detector[0, 1]


# ---------------------------------------------------------------------- resume, thresholds
def _equal(a: NeuronStats, b: NeuronStats):
    for f in NeuronStats.tensor_fields:
        x, y = getattr(a, f), getattr(b, f)
        assert torch.equal(x, y) if x.dtype in (torch.bool, torch.int64, torch.int32) else \
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7) is None, f
    assert a.detectors == b.detectors and a.per_layer == b.per_layer


@pytest.mark.parametrize("stop_after", [1, 6])
def test_a_killed_and_resumed_run_equals_one_pass(tmp_path, data_dir, stop_after):
    m = tiny("llama")
    texts = _texts(data_dir, 2)
    kw = dict(max_len=32, batch_size=2, detector_share=0.3, calib_every=2, save_every=2)
    one = neuron_stats(m, texts, **kw)
    assert neuron_stats(m, texts, checkpoint_dir=tmp_path, max_batches=stop_after, **kw) is None
    again = neuron_stats(m, texts, checkpoint_dir=tmp_path, max_batches=3, **kw)
    resumed = again or neuron_stats(m, texts, checkpoint_dir=tmp_path, **kw)
    _equal(resumed, one)
    with pytest.raises(SweepConfigMismatch, match="n_buckets"):
        neuron_stats(m, texts, checkpoint_dir=tmp_path, **{**kw, "n_buckets": 64})
    resumed.save(tmp_path / "res")
    _equal(NeuronStats.load(tmp_path / "res"), resumed)
    if stop_after == 1:  # the passes are threshold-free: another threshold needs no forward at all
        other = neuron_stats(m, texts, checkpoint_dir=tmp_path, max_batches=0, threshold=0.05, **kw)
        _equal(other, neuron_stats(m, texts, threshold=0.05, **kw))
        assert not torch.equal(other.freq, one.freq)


def test_a_run_cut_short_covers_its_first_batches_and_continues(tmp_path, data_dir):
    m = tiny("llama")
    texts = _texts(data_dir, 2)
    kw = dict(max_len=32, batch_size=2, detector_share=0.3, calib_every=2, save_every=2)
    wins, info = corpus_windows(m.tokenizer, texts, max_len=32)
    cut = neuron_stats(m, texts, checkpoint_dir=tmp_path, main_batches=3, **kw)
    assert cut.n_tokens == cut.corpus["main_tokens"] == sum(map(len, wins[:6])) < info["n_tokens"]
    assert cut.corpus["main_windows"] == 6 and cut.corpus["n_tokens"] == info["n_tokens"]
    assert cut.signal_tokens["gate"] == sum(map(len, wins[::2]))  # gate and up: the whole corpus' sample
    vals, _, _, _ = _reference(tiny_hf("llama"), wins[:6])
    p = cut.signals.index("post")
    for l in range(3):
        x = vals["post", l]
        assert float(cut.tau[p, l]) == _energy_tau(x, 0.01, Grid())
        assert torch.equal(cut.freq[p, l], ((x.abs() >= cut.tau[p, l]).sum(0).double() / len(x)).float())
    # the cut run's state continues into the whole corpus, equal to one uncut pass
    _equal(neuron_stats(m, texts, checkpoint_dir=tmp_path, **kw), neuron_stats(m, texts, **kw))
    with pytest.raises(InterpError, match="already covers"):
        neuron_stats(m, texts, checkpoint_dir=tmp_path, main_batches=2, **kw)
    with pytest.raises(InterpError, match="main_batches"):
        neuron_stats(m, texts, main_batches=0, **kw)


def test_threshold_rules_and_bad_arguments(data_dir):
    m = tiny("llama")
    texts = _texts(data_dir, 1)
    lo = neuron_stats(m, texts, max_len=32, threshold=0.001)
    hi = neuron_stats(m, texts, max_len=32, threshold=0.2)
    assert (hi.tau >= lo.tau).all() and (hi.tau > lo.tau).any()
    assert (hi.freq <= lo.freq).all()
    ab = neuron_stats(m, texts, max_len=32, threshold=0.1, threshold_kind="abs", signals=["post"])
    assert ab.signals == ["post"] and float(ab.tau[0, 0]) == 0.09375  # 0.1 rounded down to the grid
    for bad, match in [(dict(threshold_kind="pos"), "threshold_kind"), (dict(threshold=1.5), "fraction"),
                       (dict(signals=["gate"]), "include 'post'"), (dict(detector_share=0), "detector_share"),
                       (dict(max_len=1), "max_len")]:
        with pytest.raises(InterpError, match=match):
            neuron_stats(m, texts, **bad)
    with pytest.raises(InterpError, match="include 'post'"):
        neuron_stats(tiny("gpt2"), texts, signals=["gate", "post"])


@pytest.mark.slow
def test_stats_engines_agree(data_dir):
    texts = _texts(data_dir, 1)
    sts = [neuron_stats(tiny("llama", e), texts, max_len=32, max_tokens=96) for e in ("hf", "transformer_lens",
                                                                                    "nnsight")]
    for s in sts[1:]:
        torch.testing.assert_close(s.freq, sts[0].freq)
        torch.testing.assert_close(s.eta2, sts[0].eta2, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.uni_share, sts[0].uni_share, rtol=1e-4, atol=1e-5)


def test_corpus_formats_and_empty_corpus(tmp_path, data_dir):
    path = data_dir / "conceptvectors" / "llama2-7b_concepts_dev.json"
    texts = list(iter_texts(path))
    assert len(texts) == 10 and texts[0].startswith("Poland")
    assert len(list(iter_texts([path, data_dir / "conceptvectors" / "olmo-7b_concepts_dev.json"]))) == 28
    import datasets
    ds = datasets.Dataset.from_dict({"text": ["a b c d e f", "g h"]})
    assert list(iter_texts(ds)) == ["a b c d e f", "g h"]
    wins, info = corpus_windows(default_tokenizer(), [path], max_len=64, max_tokens=300)
    assert info["n_tokens"] == 300 and info["sources"] == ["conceptvectors/llama2-7b_concepts_dev.json"]
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



def test_report_entries_redraw_from_a_saved_result(tmp_path, data_dir):
    from interp.neurons.report import neuron_type_entries, stats_settings, voita_comparison
    from interp.results import cached, result_dir
    m = tiny("llama")
    st = neuron_stats(m, _texts(data_dir, 2), max_len=32, detector_share=0.3)
    cached(NeuronStats, result_dir(tmp_path, "neuron_stats", True), settings=stats_settings(True), model=m,
           command="", compute=lambda: st)
    entries = neuron_type_entries(None, tmp_path, quick=True)
    assert [e["stem"] for e in entries] == list(st.figures())
    for e in entries:
        assert (tmp_path / f"{e['stem']}.html").exists() and e["numbers"] and e["command"].startswith("interp")
    cmp = voita_comparison(st)
    assert all(v.endswith(("holds", "does not hold", "comparison")) for v in cmp.values())
