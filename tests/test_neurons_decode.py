"""Neuron decoding through the LM head: reference matmul, engines, save/load, search, compare, errors."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.errors import CheckpointMismatchError, InterpError, LayerIndexError, PromptError
from interp.neurons.decode import (NeuronMap, compare_checkpoints, compare_maps, decode_directions, decode_neuron,
                                   decode_neurons, neuron_directions, norm_transform, resolve_tokens)


def _reference(model, layer, neuron, direction, final_norm, k):
    a = model.adapter
    w = {"out": a.W_out(layer)[neuron], "up": a.W_in(layer)[:, neuron],
         "gate": None if a.W_gate(layer) is None else a.W_gate(layer)[:, neuron]}[direction]
    if final_norm == "gain":
        w = w * a.final_norm_module.weight
    s = w @ a.W_U  # the whole vocabulary at once
    return s.topk(k), s.topk(k, largest=False)


@pytest.mark.parametrize("final_norm", ["none", "gain"])
def test_decode_equals_direct_matmul_for_sampled_neurons(final_norm):
    m = tiny("llama")
    k = 7
    nm = decode_neurons(m, k=k, final_norm=final_norm, vocab_chunk=5000)  # several vocabulary chunks
    assert nm.directions == ["out", "up", "gate"] and nm.final_norm == final_norm
    assert nm.top_ids.shape == (3, 3, m.adapter.d_mlp, k)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        l = int(torch.randint(3, (1,), generator=g))
        n = int(torch.randint(m.adapter.d_mlp, (1,), generator=g))
        for d in nm.directions:
            (tv, ti), (bv, bi) = _reference(m, l, n, d, final_norm, k)
            di = nm.directions.index(d)
            assert nm.top_ids[di, l, n].tolist() == ti.tolist()
            torch.testing.assert_close(nm.top_scores[di, l, n], tv, rtol=1e-5, atol=1e-5)
            assert nm.bottom_ids[di, l, n].tolist() == bi.tolist()
            torch.testing.assert_close(nm.bottom_scores[di, l, n], bv, rtol=1e-5, atol=1e-5)


def test_grouped_topk_is_exact_and_chunking_does_not_matter():
    torch.manual_seed(1)
    D, W = torch.randn(50, 16), torch.randn(16, 9000)
    ref = (D @ W).topk(5, -1)
    low = (D @ W).topk(5, -1, largest=False)
    for chunk in (9000, 4096, 1024, 333):
        for group in (1, 8, 64):
            tv, ti, bv, bi = decode_directions(D, W, 5, vocab_chunk=chunk, group=group)
            assert torch.equal(ti, ref.indices) and torch.allclose(tv, ref.values)
            assert torch.equal(bi, low.indices) and torch.allclose(bv, low.values)
    # the gain only rescales coordinates: with a unit gain both choices agree
    m = tiny("llama")
    assert torch.equal(norm_transform(m.adapter, "gain")(torch.ones(48)), m.adapter.final_norm_module.weight)


def test_gpt2_has_no_gate_and_decodes_out_and_up():
    m = tiny("gpt2")
    nm = decode_neurons(m, k=3, layers=[1])
    assert nm.directions == ["out", "up"]
    (tv, ti), _ = _reference(m, 1, 5, "up", "none", 3)
    assert nm.top(1, 5, "up")[0] == ti.tolist()
    with pytest.raises(InterpError, match="gate"):
        decode_neurons(m, directions=["gate"])


def test_engines_agree_on_the_map():
    maps = [decode_neurons(tiny("llama", e), k=4, layers=[0, 2]) for e in ("hf", "transformer_lens", "nnsight")]
    for other in maps[1:]:
        assert torch.equal(maps[0].top_ids, other.top_ids)
        assert torch.equal(maps[0].top_scores, other.top_scores)


def test_save_load_search_and_table(tmp_path):
    m = tiny("llama")
    tid = m.encode_target(" Paris")[0]
    with torch.no_grad():  # plant a neuron that writes exactly the ' Paris' unembedding direction
        m.adapter.W_out(1)[17].copy_(m.adapter.W_U[:, tid] * 10)
    nm = decode_neurons(m, k=5)
    nm.save(tmp_path)
    back = NeuronMap.load(tmp_path)
    assert torch.equal(back.top_ids, nm.top_ids) and back.final_norm == "none" and back.layers == [0, 1, 2]
    ids = resolve_tokens(m.tokenizer, " Paris")
    assert ids == [tid]
    hits = back.search(ids, direction="out")
    assert hits[0]["layer"] == 1 and hits[0]["neuron"] == 17 and hits[0]["rank"] == 0
    words = resolve_tokens(m.tokenizer, "paris", word=True)
    assert tid in words and len(words) >= 2  # ' Paris', 'Paris', ...
    table = back.entries(m.tokenizer, layers=[1])
    e = next(x for x in table if x["neuron"] == 17 and x["direction"] == "out")
    assert e["top_tokens"][0] == " Paris" and set(e) >= {"layer", "neuron", "direction", "top_tokens", "top_scores"}
    assert len(table) == 3 * m.adapter.d_mlp


def test_compare_maps_fraction_unchanged():
    a = tiny("llama", seed=0)
    b = tiny("llama", seed=0)
    same = compare_checkpoints(a, b, k=5)
    assert all(v == [1.0, 1.0, 1.0] for v in same.top1_unchanged.values())
    with torch.no_grad():
        b.adapter.W_out(2)[:48].mul_(-1)  # flip 48 of the 96 value vectors of layer 2
    cmp = compare_checkpoints(a, b, k=5)
    assert cmp.top1_unchanged["out"][:2] == [1.0, 1.0]
    assert cmp.top1_unchanged["out"][2] == pytest.approx(0.5)
    assert cmp.top1_unchanged["up"] == [1.0, 1.0, 1.0]


def test_bad_input_errors():
    m = tiny("llama")
    with pytest.raises(LayerIndexError, match="layer 5 out of range"):
        decode_neurons(m, layers=[5])
    with pytest.raises(LayerIndexError, match="neuron 96 out of range"):
        decode_neuron(m, 0, 96)
    with pytest.raises(LayerIndexError, match="neuron -1"):
        decode_neuron(m, 0, -1)
    with pytest.raises(InterpError, match="final_norm"):
        decode_neurons(m, final_norm="full")
    with pytest.raises(PromptError, match="tokens, not one"):
        resolve_tokens(m.tokenizer, " Eiffel Tower")
    with pytest.raises(CheckpointMismatchError, match="n_layers: 3 vs 2"):
        compare_checkpoints(m, tiny("llama", n_layers=2))
    nm3, nm2 = decode_neurons(m, k=3), decode_neurons(tiny("llama", n_layers=2), k=3)
    with pytest.raises(CheckpointMismatchError, match="layers"):
        compare_maps(nm3, nm2)
    with pytest.raises(LayerIndexError, match="not in this map"):
        nm2.top(2, 0)
    with pytest.raises(InterpError, match="direction"):
        neuron_directions(m.adapter, 0, "down")


@pytest.mark.slow
def test_default_model_layer_matches_reference(default_model):
    m = default_model
    nm = decode_neurons(m, layers=[29], k=5, directions=["out", "up"], bottom=False)
    for n in (0, 123, 1535):
        for d in ("out", "up"):
            (tv, ti), _ = _reference(m, 29, n, d, "none", 5)
            assert nm.top(29, n, d)[0] == ti.tolist()
    assert decode_neuron(m, 29, 0, k=5)["top_ids"] == nm.top(29, 0)[0]
