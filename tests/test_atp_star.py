"""AtP* (Kramár et al. 2024): the QK fix and GradDrop against brute-force references on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import default_tokenizer, tiny, tiny_hf
from interp.errors import InterventionError
from interp.interventions import InterventionPlan
from interp.mediation import activation_patching, attribution_patching
from interp.mediation.attribution import cost_to_recall, patched_patterns
from interp.model import Model

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Berlin Wall Tower is in the city of"
KW = dict(answer=" Paris", wrong=" Berlin")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attention_pattern_equals_the_engines(arch):
    m = tiny(arch, "hf")
    b = m.tokenize([CLEAN, "Rome is the capital of"])  # left padding in row 1
    out = m.run(b, reads=["attn_pattern", "resid_pre"])
    for l in range(m.n_layers):
        A = m.adapter.attention_pattern(l, out.cache["resid_pre", l], b.position_ids, b.attention_mask)
        for r in range(2):
            s = b.width - b.lengths[r]
            assert torch.allclose(A[r, :, s:, s:], out.cache["attn_pattern", l][r, :, s:, s:], atol=1e-6)


def test_attention_pattern_equals_the_engine_on_the_default_model(default_model):
    m = default_model
    b = m.tokenize(CLEAN)
    out = m.run(b, reads=["attn_pattern", "resid_pre"], layers=[0, 14, 29])
    for l in (0, 14, 29):
        A = m.adapter.attention_pattern(l, out.cache["resid_pre", l], b.position_ids, b.attention_mask)
        assert torch.allclose(A, out.cache["attn_pattern", l], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("site,real,unit", [("resid_pre", "resid_pre", None), ("resid_post", "resid_post", None),
                                             ("resid_mid", "resid_mid", None), ("attn_out", "attn_out", None),
                                             ("mlp_out", "mlp_out", None), ("head", "attn_z", 1),
                                             ("neuron", "mlp_post", 3)])
def test_patched_patterns_equal_real_patched_forwards(arch, site, real, unit):
    """The QK fix's recomputed pattern of every cell equals the pattern of a real patched forward."""
    m = tiny(arch, "hf")
    layer = 0
    ls = layer if site == "resid_pre" else layer + 1
    pair = m.tokenize([CLEAN, CORRUPT])
    reads = [(real, layer), ("resid_pre", ls), ("resid_mid", layer)]
    src, base = (m.run(t, reads=reads) for t in (CLEAN, CORRUPT))
    n = pair.lengths[0]
    d = (src.cache[real, layer] - base.cache[real, layer])[0]
    units = None if unit is None else [unit]
    if unit is not None:
        d = d[:, [unit]]
    positions = list(range(n))
    _, A_b, A_p, dA = patched_patterns(m, site, layer, positions, units, d, base.cache, m.tokenize(CORRUPT))
    plan = InterventionPlan(pair.select([0] + [1] * n))
    for p in positions:
        plan.set(real, layer, 1 + p, [p], source_row=0, unit=unit)
    ref = m.run(plan=plan, reads=[("attn_pattern", ls)]).cache["attn_pattern", ls][1:]
    assert torch.allclose(A_p, ref, atol=1e-5), (A_p - ref).abs().max()
    # the JVP is the first-order change: matches a small finite difference
    eps = 1e-2
    _, _, A_e, _ = patched_patterns(m, site, layer, positions, units, eps * d, base.cache, m.tokenize(CORRUPT))
    fd = (A_e - A_b) / eps
    assert torch.allclose(fd, dA, atol=2e-2 * max(1.0, dA.abs().max().item())), (fd - dA).abs().max()


def _qk_only_model(arch: str, scale: float = 100.0):
    """One layer whose patched token moves only queries and keys, with a metric linear in the pattern.

    Tokens ``a`` and ``b`` have embeddings ``(4, −4, 0, …)`` and ``(−4, 4, 0, …)`` (no positional
    embedding): the norm's mean and scale are the same, the values ignore coordinates 0 and 1 —
    so a token's value does not move, not even to first order through the norm — the queries and
    keys read them strongly, and the last token ``of`` carries ``a``'s coordinates, so its query attends to
    ``a`` (and itself) with a saturated softmax and ignores ``b``.  The MLP writes nothing and the
    final norm is the identity — the logits are linear in the attention pattern, and the only
    path of a patch at the swapped token is through the queries and keys.
    """
    hf = tiny_hf(arch, seed=3, n_layers=1)
    tok = default_tokenizer()
    a_id = tok(" Tower", add_special_tokens=False)["input_ids"][0]
    b_id = tok(" Wall", add_special_tokens=False)["input_ids"][0]
    of_id = tok(" of", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        if arch == "llama":
            base = hf.model
            E = base.embed_tokens.weight
            attn, blk = base.layers[0].self_attn, base.layers[0]
            attn.v_proj.weight[:, :2] = 0
            attn.q_proj.weight[:, :2] *= scale
            attn.k_proj.weight[:, :2] *= scale
            blk.mlp.down_proj.weight.zero_()
            base.norm = torch.nn.Identity()
        else:
            base = hf.transformer
            E = base.wte.weight
            base.wpe.weight.zero_()
            attn, blk = base.h[0].attn, base.h[0]
            d = E.shape[1]
            attn.c_attn.weight[:2, 2 * d:] = 0
            attn.c_attn.weight[:2, :2 * d] *= scale
            blk.mlp.c_proj.weight.zero_()
            blk.mlp.c_proj.bias.zero_()
            base.ln_f = torch.nn.Identity()
        E[a_id], E[b_id] = 0.0, 0.0
        E[a_id, 0], E[a_id, 1] = 4.0, -4.0
        E[b_id, 0], E[b_id, 1] = -4.0, 4.0
        E[of_id, 0], E[of_id, 1] = 4.0, -4.0
    return Model(hf, tok, "hf", name=f"qk-only-{arch}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_qk_fix_is_exact_when_only_queries_and_keys_move(arch):
    m = _qk_only_model(arch)
    clean, corrupt = "The Eiffel Tower is in the city of", "The Eiffel Wall is in the city of"
    kw = dict(sites=["resid_pre"], metric="logit_diff", answer=" Paris", wrong=" Rome")
    res = activation_patching(m, clean, corrupt, fast=False, **kw)
    real = res.effect("resid_pre")
    atp = attribution_patching(m, clean, corrupt, method="atp", **kw).grid("resid_pre")
    fix = attribution_patching(m, clean, corrupt, method="atp+qk", **kw).grid("resid_pre")
    total = res.clean_metric - res.corrupt_metric
    assert (real.abs() > 1e-7).sum() == 1  # only the swapped token moves anything ...
    assert real.abs().max() > 0.9 * abs(total) > 0  # ... and it carries the whole effect
    assert torch.allclose(fix, real, rtol=0, atol=1e-6), (fix - real).abs().max()
    # the linear estimate misses it through the saturated softmax
    assert (atp - real).abs().max() > 0.9 * real.abs().max()


def _grad_drop_reference(m, clean, corrupt, site, answer, wrong):
    """Brute force: one forward + backward per dropped block, with plain HF hooks that detach the
    block's attention and MLP outputs; ``c = Σ_ℓ |Δ·∇_ℓ| / (L − 1)`` per position."""
    a = m.adapter
    tok = m.tokenizer
    ids = {t: tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"] for t in (clean, corrupt)}
    aid, wid = (tok(x, add_special_tokens=False)["input_ids"][0] for x in (answer, wrong))

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    def run(text, drop=None):
        acts, hs = {}, [a.embed_module.register_forward_hook(lambda m_, i, o: o.detach().requires_grad_(True))]
        for l in range(a.n_layers):
            if site == "resid_pre":
                hs.append(a.blocks[l].register_forward_pre_hook(
                    lambda m_, args, kw, l=l: acts.__setitem__(l, args[0] if args else kw["hidden_states"]),
                    with_kwargs=True))
            if l == drop:  # registered before the recording hook: the recorded output is the detached one
                for mod in (a.attn[l], a.mlp[l]):
                    hs.append(mod.register_forward_hook(
                        lambda m_, i, o: (o[0].detach(),) + tuple(o[1:]) if isinstance(o, tuple) else o.detach()))
            if site != "resid_pre":
                mod = (a.attn if site == "attn_out" else a.mlp)[l]
                hs.append(mod.register_forward_hook(lambda m_, i, o, l=l: acts.__setitem__(l, first(o))))
        with torch.enable_grad():
            lg = m.hf(ids[text]).logits[0, -1]
        for h in hs:
            h.remove()
        return lg[aid] - lg[wid], acts

    _, src = run(clean)
    total = 0
    for ell in range(a.n_layers):
        metric, base = run(corrupt, drop=ell)
        per = []
        for l in range(a.n_layers):
            x = base[l]
            g = torch.autograd.grad(metric, x, retain_graph=True)[0] if x.requires_grad else torch.zeros_like(x)
            per.append(((src[l] - x.detach()) * g).sum(-1)[0])
        total = total + torch.stack(per).abs()
    return total / (a.n_layers - 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out"])
def test_grad_drop_equals_one_backward_per_dropped_block(arch, site):
    m = tiny(arch, "hf")
    ref = _grad_drop_reference(m, CLEAN, CORRUPT, site, " Paris", " Berlin")
    gd = attribution_patching(m, CLEAN, CORRUPT, sites=[site], method="atp+gd", **KW)
    assert not gd.signed
    assert torch.allclose(gd.grid(site), ref.float(), atol=1e-5), (gd.grid(site) - ref).abs().max()


def test_methods_and_errors():
    m = tiny("llama", "hf", n_layers=2)
    plain = attribution_patching(m, CLEAN, CORRUPT, sites=["resid_pre", "head"], **KW)
    star = attribution_patching(m, CLEAN, CORRUPT, sites=["resid_pre", "head"], method="atp*", **KW)
    assert plain.method == "atp" and plain.signed and star.method == "atp*" and not star.signed
    assert (star.grid("resid_pre") >= 0).all() and star.settings["qk_fix"] and star.settings["grad_drop"]
    with pytest.raises(InterventionError, match="atp\\*"):
        attribution_patching(m, CLEAN, CORRUPT, method="atp-star", **KW)


def test_cost_to_recall():
    truth = torch.tensor([5.0, -4.0, 0.1, 0.2, 3.0])
    assert cost_to_recall(truth, truth).tolist() == [1, 2, 3, 4, 5]  # an oracle
    est = torch.tensor([0.0, 1.0, 0.9, 0.5, 2.0])  # visits cells 4, 1, 2, 3, 0
    assert cost_to_recall(est, truth).tolist() == [5, 5, 5, 5, 5]
    assert cost_to_recall(est, truth, k_max=2).tolist() == [5, 5]
    est = torch.tensor([3.0, 0.0, 2.5, 0.1, 1.0])  # visits 0, 2, 4, 3, 1: the 2nd largest comes last
    assert cost_to_recall(est, truth).tolist() == [1, 5, 5, 5, 5]


def test_validation_sweep_resumes_and_summarises(tmp_path):
    from interp.mediation.atp_validation import AttributionValidationResult, validate_attribution
    from interp.mediation.pairs import PromptPair

    m = tiny("llama", "hf", n_layers=2)
    pairs = [PromptPair("a", CLEAN, CORRUPT, " Paris", " Berlin", "Eiffel", "Berlin Wall"),
             PromptPair("b", "The Rome Tower is in the city of", "The Berlin Tower is in the city of",
                        " Rome", " Berlin", "Rome", "Berlin")]
    r1 = validate_attribution(m, pairs[:1], tmp_path, sites=["resid_pre", "head"], k_max=5, progress=False)
    assert r1.n_pairs == 1
    r = validate_attribution(m, pairs, tmp_path, sites=["resid_pre", "head"], k_max=5, progress=False)
    lines = (tmp_path / "items.jsonl").read_text().splitlines()
    assert r.n_pairs == 2 and len(lines) == 2  # the first pair was not recomputed
    for m_ in ("atp", "atp+qk", "atp+gd", "atp*"):
        for s in ("resid_pre", "head"):
            v = r.spearman["magnitude"][m_]["per_site"][s]
            assert -1 <= v["ci"][0] <= v["mean"] <= v["ci"][1] <= 1
        c = r.cost[m_]["mean"]
        assert all(k + 1 <= ci for k, ci in enumerate(c))  # never better than an oracle
    assert set(r.spearman["signed"]) == {"atp", "atp+qk"}
    r.save(tmp_path)
    again = AttributionValidationResult.load(tmp_path)
    assert again.spearman == json.loads(json.dumps(r.spearman))
    again.figure()
