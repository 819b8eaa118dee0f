"""Path patching: the batched plan equals a one-path-at-a-time reference with plain HF hooks."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.errors import InterventionError, LayerIndexError
from interp.mediation.path_patching import PathPatchingResult, path_patching

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Berlin Wall Tower is in the city of"
KW = dict(answer=" Paris", wrong=" Berlin")


def reference(m, clean, corrupt, sender, receiver_layer, *, direction="noise", freeze_mlps=False,
              positions=None, answer=" Paris", wrong=" Berlin", head=None, receiver_positions=None):
    """Wang et al.'s two stages with forward hooks on the HF modules, one sender at a time.

    ``head=("q" | "k" | "v", h)``: the receiver is that head's query / key / value projection
    output at ``receiver_positions`` (default: last for q, all for k / v) in layer ``receiver_layer``."""
    a, tok = m.adapter, m.tokenizer
    ids = {t: torch.tensor([m.tokenize(t).token_ids(0)]) for t in (clean, corrupt)}
    aid, wid = (m.encode_target(x)[0] for x in (answer, wrong))
    base, src = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    L, H, dh = a.n_layers, a.n_heads, a.d_head

    def record(text):
        z, mo, hs = {}, {}, []
        for l in range(L):
            hs.append(a.o_proj[l].register_forward_pre_hook(lambda mod, args, l=l: z.__setitem__(l, args[0].clone())))
            hs.append(a.mlp[l].register_forward_hook(lambda mod, i, o, l=l: mo.__setitem__(l, o.clone())))
        with torch.no_grad():
            m.hf(ids[text])
        for h in hs:
            h.remove()
        return z, mo

    zb, mb = record(base)
    zs, ms = record(src)
    n = ids[base].shape[1]
    pos = list(range(n)) if positions is None else positions
    kind, ls, hd = (tuple(sender) + (None,))[:3]
    hs, kept = [], {}

    def z_hook(mod, args, l):
        x = args[0].clone()
        if l == ls and kind == "head":
            x4, s4 = x.view(1, n, H, dh), zs[l].view(1, n, H, dh)
            x4[:, pos, hd] = s4[:, pos, hd]
        elif ls < l < receiver_layer:
            x = zb[l].clone()
        return (x,)

    def mlp_hook(mod, i, o, l):
        if l == ls and kind == "mlp":
            o = o.clone()
            o[:, pos] = ms[l][:, pos]
            return o
        if freeze_mlps and (ls + (kind == "mlp")) <= l < receiver_layer:
            return mb[l].clone()
        return o

    for l in range(L):
        hs.append(a.o_proj[l].register_forward_pre_hook(lambda mod, args, l=l: z_hook(mod, args, l)))
        hs.append(a.mlp[l].register_forward_hook(lambda mod, i, o, l=l: mlp_hook(mod, i, o, l)))
    if head is not None:   # the receiving projection: its output, split into heads by hand
        part, unit = "qkv".index(head[0]), head[1]
        mod = a.qkv[receiver_layer][part]
        rpos = receiver_positions or ([n - 1] if head[0] == "q" else list(range(n)))

        def cols(o):   # columns of this head in the module's output (GPT-2: [q | k | v])
            off = part * a.d_model if a.layout.fused_qkv else 0
            return slice(off + unit * dh, off + (unit + 1) * dh)
        hs.append(mod.register_forward_hook(lambda mod_, i, o: kept.__setitem__("head", o[:, rpos, cols(o)].clone())))
    elif receiver_layer < L:
        def grab(mod, args, kw):
            x = args[0] if args else kw["hidden_states"]
            kept["resid"] = x[:, -1].clone()
        hs.append(a.blocks[receiver_layer].register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad():
        lg = m.hf(ids[base]).logits[0, -1]
    for h in hs:
        h.remove()
    if head is not None:  # stage 2: the base run with only that head's input replaced
        def put_head(mod_, i, o):
            o = o.clone()
            o[:, rpos, cols(o)] = kept["head"]
            return o
        hk = mod.register_forward_hook(put_head)
        with torch.no_grad():
            lg = m.hf(ids[base]).logits[0, -1]
        hk.remove()
    elif receiver_layer < L:  # stage 2: the base run with only the receiver's input replaced
        def put(mod, args, kw):
            if args:
                x = args[0].clone()
                x[:, -1] = kept["resid"]
                return (x,) + tuple(args[1:]), kw
            x = kw["hidden_states"].clone()
            x[:, -1] = kept["resid"]
            return args, {**kw, "hidden_states": x}
        h = a.blocks[receiver_layer].register_forward_pre_hook(put, with_kwargs=True)
        with torch.no_grad():
            lg = m.hf(ids[base]).logits[0, -1]
        h.remove()
    return float(lg[aid] - lg[wid])


SENDERS = [("head", 0, 1), ("head", 1, 3), ("mlp", 0), ("mlp", 1), ("head", 0, 2)]


@pytest.mark.parametrize("engine", ["hf", "transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_path_patching_equals_one_path_at_a_time(arch, engine):
    m = tiny(arch, engine, n_layers=3)
    ref_model = tiny(arch, "hf", n_layers=3)  # the reference hooks the plain HF modules
    for receiver, r in (("logits", 3), (("resid", 2), 2)):
        for freeze in (False, True):
            res = path_patching(m, CLEAN, CORRUPT, senders=SENDERS, receiver=receiver, freeze_mlps=freeze,
                                max_rows=4, **KW)
            ref = [reference(ref_model, CLEAN, CORRUPT, s, r, freeze_mlps=freeze) for s in SENDERS]
            assert torch.allclose(torch.tensor(res.values, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64), atol=1e-5), \
                (arch, engine, receiver, freeze, res.values, ref)


def _sharpen(m, f: float = 4.0) -> None:
    """Scale a random model's queries and keys by ``f`` (scores by f²): its near-uniform attention
    hides what a path into queries or keys does; sharper attention makes those effects measurable."""
    a = m.adapter
    with torch.no_grad():
        for l in range(a.n_layers):
            q, k, _ = a.qkv[l]
            if a.layout.fused_qkv:      # GPT-2's c_attn: [q | k | v] columns
                q.weight[:, :2 * a.d_model] *= f
                q.bias[:2 * a.d_model] *= f
            else:
                q.weight *= f
                k.weight *= f


@pytest.mark.parametrize("engine", ["hf", "transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_paths_into_a_heads_queries_keys_and_values_equal_the_reference(arch, engine):
    """Wang et al.'s receivers: one head's queries (last position), keys or values (every position)
    in layer 2; llama's keys/values are KV heads (GQA)."""
    m = tiny(arch, engine, n_layers=3)
    ref_model = tiny(arch, "hf", n_layers=3)
    for x in (m, ref_model):
        _sharpen(x)
    for kind, h in (("q", 1), ("k", 1), ("v", 0)):
        res = path_patching(m, CLEAN, CORRUPT, senders=SENDERS, receiver=(kind, 2, h), max_rows=4, **KW)
        ref = torch.tensor([reference(ref_model, CLEAN, CORRUPT, s, 2, head=(kind, h)) for s in SENDERS],
                           dtype=torch.float64)
        got = torch.tensor(res.values, dtype=torch.float64)
        # the effects (~1e-4..1e-2 on a random model) are matched at least 20x finer than the largest
        assert (got - ref).abs().max() <= 3e-6, (arch, engine, kind, res.values, ref)
        assert (ref - res.base_metric).abs().max() > 20 * 3e-6, (kind, ref - res.base_metric)
    res = path_patching(m, CLEAN, CORRUPT, senders=SENDERS, receiver=("k", 2, 0), receiver_positions=[2, -1], **KW)
    ref = [reference(ref_model, CLEAN, CORRUPT, s, 2, head=("k", 0), receiver_positions=[2, 8]) for s in SENDERS]
    assert torch.allclose(torch.tensor(res.values, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                          atol=1e-5)
    assert res.settings["receiver_site"] == "attn_k" and "positions [2, 8]" in res.receiver


def test_denoising_direction_and_sender_positions():
    m = tiny("llama", "hf")
    res = path_patching(m, CLEAN, CORRUPT, senders=SENDERS, receiver=("resid", 2), direction="denoise",
                        positions=[3, -1], **KW)
    ref = [reference(m, CLEAN, CORRUPT, s, 2, direction="denoise", positions=[3, 8]) for s in SENDERS]
    assert torch.allclose(torch.tensor(res.values, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64), atol=1e-5)


def test_all_senders_grid_and_identities(tmp_path):
    m = tiny("gpt2", "hf")
    res = path_patching(m, CLEAN, CORRUPT, **KW)
    assert len(res.senders) == 3 * 4 + 3 and res.head_grid().shape == (3, 4)
    assert not res.head_grid().isnan().any() and not res.mlp_grid().isnan().any()
    # a last-layer head's only path to the logits is direct: path patching = activation patching
    from interp.mediation import activation_patching
    act = activation_patching(m, CLEAN, CORRUPT, sites=["head"], layers=[2], per_position=False,
                              direction="noise", **KW)
    assert torch.allclose(res.head_grid(normalized=False)[2], act.effect("head")[0, 0].double(), atol=1e-5)
    res.save(tmp_path)
    again = PathPatchingResult.load(tmp_path)
    assert again.values == res.values and again.figure() is not None
    # marked senders (e.g. significant after a correction) carry a "*": here the last-layer heads
    from interp.mediation.path_patching import path_patching_figure
    marks = [kind == "head" and layer == 2 for kind, layer, _ in res.senders]
    text = path_patching_figure(res, marks=marks).data[0].text
    assert [row.count("*") for row in text] == [0, 0, 4] and text[2][-1] == ""


def test_bad_senders_and_receivers():
    m = tiny("llama", "hf")
    with pytest.raises(LayerIndexError, match="not before the receiver"):
        path_patching(m, CLEAN, CORRUPT, senders=[("head", 2, 0)], receiver=("resid", 2), **KW)
    with pytest.raises(InterventionError, match="receiver must be"):
        path_patching(m, CLEAN, CORRUPT, receiver=("z", 2, 0), **KW)
    with pytest.raises(LayerIndexError, match="KV head 2 out of range 0..1"):   # tiny llama: 2 KV heads
        path_patching(m, CLEAN, CORRUPT, receiver=("k", 2, 2), **KW)
    with pytest.raises(LayerIndexError, match="no sender before it"):
        path_patching(m, CLEAN, CORRUPT, receiver=("q", 0, 0), **KW)
    with pytest.raises(InterventionError, match="receiver_positions"):
        path_patching(m, CLEAN, CORRUPT, receiver="logits", receiver_positions=[1], **KW)
    with pytest.raises(LayerIndexError, match="head 9"):
        path_patching(m, CLEAN, CORRUPT, senders=[("head", 0, 9)], **KW)
    with pytest.raises(InterventionError, match="sender kind"):
        path_patching(m, CLEAN, CORRUPT, senders=[("neuron", 0, 1)], **KW)


# ----------------------------------------------------------------------------- default model
def test_default_model_three_pairs_equal_the_reference(default_model):
    m = default_model
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Alice and Bob went to the store, Bob gave a drink to"
    kw = dict(answer=" Mary", wrong=" John")
    cases = [(("head", 20, 3), "logits", 30), (("mlp", 12), ("resid", 24), 24), (("head", 9, 6), ("resid", 16), 16),
             # into the name mover L23H3 (benchmarks/path_patching_ioi.py): its queries, its KV head's keys / values
             (("mlp", 18), ("q", 23, 3), 23), (("mlp", 21), ("k", 23, 1), 23), (("head", 16, 1), ("v", 23, 1), 23)]
    for sender, receiver, r in cases:
        res = path_patching(m, clean, corrupt, senders=[sender], receiver=receiver, **kw)
        head = (receiver[0], receiver[2]) if len(receiver) == 3 else None
        ref = reference(m, clean, corrupt, sender, r, head=head, **kw)
        assert abs(res.values[0] - ref) <= 1e-5, (sender, receiver, res.values[0], ref)
        if head:
            assert abs(ref - res.base_metric) > 0.1, (sender, receiver, ref - res.base_metric)
