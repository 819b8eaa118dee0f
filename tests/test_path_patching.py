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
              positions=None, answer=" Paris", wrong=" Berlin"):
    """Wang et al.'s two stages with forward hooks on the HF modules, one sender at a time."""
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
    if receiver_layer < L:
        def grab(mod, args, kw):
            x = args[0] if args else kw["hidden_states"]
            kept["resid"] = x[:, -1].clone()
        hs.append(a.blocks[receiver_layer].register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad():
        lg = m.hf(ids[base]).logits[0, -1]
    for h in hs:
        h.remove()
    if receiver_layer < L:  # stage 2: the base run with only the receiver's input replaced
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


def test_bad_senders_and_receivers():
    m = tiny("llama", "hf")
    with pytest.raises(LayerIndexError, match="not before the receiver"):
        path_patching(m, CLEAN, CORRUPT, senders=[("head", 2, 0)], receiver=("resid", 2), **KW)
    with pytest.raises(InterventionError, match="attn_q"):
        path_patching(m, CLEAN, CORRUPT, receiver=("q", 2, 0), **KW)
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
    cases = [(("head", 20, 3), "logits", 30), (("mlp", 12), ("resid", 24), 24), (("head", 9, 6), ("resid", 16), 16)]
    for sender, receiver, r in cases:
        res = path_patching(m, clean, corrupt, senders=[sender], receiver=receiver, **kw)
        ref = reference(m, clean, corrupt, sender, r, **kw)
        assert abs(res.values[0] - ref) <= 1e-5, (sender, receiver, res.values[0], ref)
