"""Activation patching and attribution patching: invariants, a per-cell reference, engines, errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny
from interp.errors import InterventionError, PromptError
from interp.mediation import PatchingResult, activation_patching, attribution_patching, spearman
from interp.mediation.attribution import compare_with_patching

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Berlin Wall Tower is in the city of"
KW = dict(answer=" Paris", wrong=" Berlin")


@pytest.fixture(scope="module")
def tm():
    return tiny("llama", "hf", n_layers=3)


def test_identical_prompts_give_zero_effect(tm):
    for direction in ("denoise", "noise"):
        r = activation_patching(tm, CLEAN, CLEAN, sites=["resid_pre", "resid_mid", "resid_post", "attn_out",
                                                          "mlp_out", "head", "neuron"],
                                neurons=[0, 5], direction=direction, **KW)
        for s in r.sites:
            assert r.effect(s).abs().max().item() < 1e-5, (direction, s)


def test_skipping_path_equals_full_rows(tm):
    sites = ["resid_pre", "resid_post", "attn_out", "mlp_out", "head"]
    f = activation_patching(tm, CLEAN, CORRUPT, sites=sites, fast=True, max_rows=5, **KW)
    p = activation_patching(tm, CLEAN, CORRUPT, sites=sites, fast=False, **KW)
    assert f.settings["path"] == "skip" and p.settings["path"] == "plan"
    for s in f.sites:
        assert torch.allclose(f.grid(s), p.grid(s), atol=1e-5)
    assert f.clean_metric == pytest.approx(p.clean_metric, abs=1e-5)


def test_grid_equals_one_cell_at_a_time_reference(tm):
    """resid_pre / mlp_out cells equal one hooked HF forward per cell."""
    r = activation_patching(tm, CLEAN, CORRUPT, sites=["resid_pre", "mlp_out"], **KW)
    hf, tok = tm.hf, tm.tokenizer
    ids_c = tok(CLEAN, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids_k = tok(CORRUPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    a_id, w_id = tok(" Paris", add_special_tokens=False)["input_ids"][0], tok(" Berlin", add_special_tokens=False)["input_ids"][0]
    cache = {}
    hs = []
    for l, blk in enumerate(hf.model.layers):
        hs.append(blk.register_forward_pre_hook(lambda m, a, kw, l=l: cache.__setitem__(("resid_pre", l), (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True))
        hs.append(blk.mlp.register_forward_hook(lambda m, i, o, l=l: cache.__setitem__(("mlp_out", l), o.clone())))
    with torch.no_grad():
        hf(ids_c)
    for h in hs:
        h.remove()
    n = ids_c.shape[1]
    for site in ("resid_pre", "mlp_out"):
        for l in range(tm.n_layers):
            for p in range(n):
                blk = hf.model.layers[l]
                if site == "resid_pre":
                    def pre(m, a, kw, l=l, p=p):
                        x = (a[0] if a else kw["hidden_states"]).clone()
                        x[:, p] = cache[("resid_pre", l)][:, p]
                        if a:
                            return (x,) + tuple(a[1:]), kw
                        kw["hidden_states"] = x
                        return a, kw
                    h = blk.register_forward_pre_hook(pre, with_kwargs=True)
                else:
                    def post(m, i, o, l=l, p=p):
                        o = o.clone()
                        o[:, p] = cache[("mlp_out", l)][:, p]
                        return o
                    h = blk.mlp.register_forward_hook(post)
                with torch.no_grad():
                    lg = hf(ids_k).logits[0, -1]
                h.remove()
                ref = (lg[a_id] - lg[w_id]).item()
                assert r.grid(site)[l, p].item() == pytest.approx(ref, abs=1e-5), (site, l, p)


def test_first_layer_patch_of_the_changed_tokens_restores_everything(tm):
    # the prompts differ at positions 1..3: patching all of them at resid_pre 0 = the source run
    r = activation_patching(tm, CLEAN, CORRUPT, sites="resid_pre", layers=[0], **KW)
    assert r.grid("resid_pre")[0, 0].item() == pytest.approx(r.corrupt_metric, abs=1e-5)  # same token
    last = activation_patching(tm, CLEAN, CORRUPT, sites="resid_post", layers=[-1], positions=[-1], **KW)
    assert last.grid("resid_post")[0, 0].item() == pytest.approx(last.clean_metric, abs=1e-4)
    assert last.normalized("resid_post")[0, 0].item() == pytest.approx(1.0, abs=1e-3)
    noise = activation_patching(tm, CLEAN, CORRUPT, sites="resid_post", layers=[-1], positions=[-1],
                                direction="noise", **KW)
    assert noise.grid("resid_post")[0, 0].item() == pytest.approx(noise.corrupt_metric, abs=1e-4)


def test_engines_agree_on_all_sites():
    ref = None
    for eng in ("hf", "transformer_lens", "nnsight"):
        m = tiny("llama", eng, n_layers=2)
        r = activation_patching(m, CLEAN, CORRUPT, sites=["resid_pre", "resid_mid", "attn_out", "head", "neuron"],
                                neurons=[1, 7], positions=[2, 3, -1], metric="prob", **KW)
        if ref is None:
            ref = r
            continue
        for s in r.sites:
            assert torch.allclose(r.grid(s), ref.grid(s), atol=1e-4), (eng, s)


def test_unit_sites_shapes_and_all_positions(tm):
    r = activation_patching(tm, CLEAN, CORRUPT, sites=["head", "neuron"], neurons=[0, 3, 9], per_position=False, **KW)
    assert r.grid("head").shape == (tm.n_layers, 1, tm.adapter.n_heads)
    assert r.grid("neuron").shape == (tm.n_layers, 1, 3)


def test_user_metric_and_save_load(tm, tmp_path):
    r = activation_patching(tm, CLEAN, CORRUPT, sites="attn_out", metric=lambda lg: lg[:, 42].float(), layers=[0, 2])
    assert r.metric == "<lambda>" and r.grid("attn_out").shape == (2, 9)
    r.save(tmp_path)
    d = json.loads((tmp_path / "patching.json").read_text())
    assert d["values"]["attn_out"] == r.values["attn_out"]
    back = PatchingResult.load(tmp_path)
    assert torch.equal(back.grid("attn_out"), r.grid("attn_out"))
    assert back.figure() is not None


def test_bad_input(tm):
    with pytest.raises(PromptError, match="same number of tokens"):
        activation_patching(tm, CLEAN, "The Colosseum Tower is in the city of")
    with pytest.raises(InterventionError, match="unknown patching site"):
        activation_patching(tm, CLEAN, CORRUPT, sites="resid")
    with pytest.raises(InterventionError, match="neurons"):
        activation_patching(tm, CLEAN, CORRUPT, sites="neuron")
    with pytest.raises(InterventionError, match="direction"):
        activation_patching(tm, CLEAN, CORRUPT, direction="sideways")
    with pytest.raises(PromptError, match="tokenises to nothing"):
        activation_patching(tm, CLEAN, CORRUPT, answer="")
    with pytest.raises(InterventionError, match="metric"):
        activation_patching(tm, CLEAN, CORRUPT, metric="kl")
    # the same answer token on both sides: a logit difference of 0 everywhere would be all-NaN effects
    with pytest.raises(InterventionError, match="same token"):
        activation_patching(tm, CLEAN, CORRUPT, answer=" Paris", wrong=" Paris")
    assert activation_patching(tm, CLEAN, CORRUPT, answer=" Paris", wrong=" Paris", metric="prob",
                               sites="resid_pre", layers=[0]).clean_metric > 0


def test_atp_correlates_with_patching_and_zero_for_identical(tm):
    sites = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "head", "neuron"]
    full = activation_patching(tm, CLEAN, CORRUPT, sites=sites, neurons=[0, 1, 2, 3], **KW)
    atp = attribution_patching(tm, CLEAN, CORRUPT, sites=sites, neurons=[0, 1, 2, 3], **KW)
    for s in sites:
        assert atp.grid(s).shape == full.grid(s).shape
    rho = compare_with_patching(atp, full)
    assert rho["mlp_out"] > 0.5 and rho["head"] > 0.5, rho
    # AtP is the exact directional derivative: compare with a finite difference of a tiny patch
    from interp.interventions import InterventionPlan
    lg_ids = [tm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Paris", " Berlin")]
    src = tm.run(CLEAN, reads=["resid_pre", "attn_out"]).cache
    base = tm.run(CORRUPT, reads=["resid_pre", "attn_out"])
    m0 = (base.logits[0, lg_ids[0]] - base.logits[0, lg_ids[1]]).item()
    eps = 1e-3
    for site, l, p in (("resid_pre", 1, 3), ("resid_pre", 2, 8), ("attn_out", 0, 2)):
        a_b, a_s = base.cache[site, l][0, p], src[site, l][0, p]
        plan = InterventionPlan(tm.tokenize([CORRUPT]))
        plan.set(site, l, 0, [p], (a_b + eps * (a_s - a_b)).double())
        lg = tm.run(plan=plan).logits[0]
        fd = ((lg[lg_ids[0]] - lg[lg_ids[1]]).item() - m0) / eps
        assert atp.grid(site)[l, p].item() == pytest.approx(fd, rel=0.05, abs=2e-3), (site, l, p)
    same = attribution_patching(tm, CLEAN, CLEAN, sites=["resid_pre", "head"], **KW)
    assert same.grid("resid_pre").abs().max() == 0 and same.grid("head").abs().max() == 0


def test_spearman():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x * 10) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([3.0, 3.0, 5.0])) == pytest.approx(1.0)


@pytest.mark.slow
def test_default_model_fast_patching_matches_plan(default_model):
    c, k = "The Eiffel Tower is located in the city of", "The Kremlin Palace is located in the city of"
    kw = dict(sites="resid_pre", layers=[0, 12, 29], positions=[3, -1])
    f = activation_patching(default_model, c, k, fast=True, **kw)
    p = activation_patching(default_model, c, k, fast=False, **kw)
    assert f.answer.strip() == "Paris" and f.clean_metric > 0
    assert torch.allclose(f.grid("resid_pre"), p.grid("resid_pre"), atol=1e-4)


def test_atp_works_with_autograd_switched_off_globally():
    import torch

    from conftest import tiny
    from interp.mediation.attribution import attribution_patching
    m = tiny("llama")
    prev = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        res = attribution_patching(m, "The cat sat on the mat", "The dog sat on the mat", sites="resid_pre")
    finally:
        torch.set_grad_enabled(prev)
    assert res.grid("resid_pre").abs().sum() > 0


def test_patching_sweep_over_pairs_resumes_with_statistics(tm, tmp_path):
    from interp.mediation.pairs import PatchingSweepResult, PromptPair, patching_sweep

    pairs = [PromptPair("a", CLEAN, CORRUPT, " Paris", " Berlin", "Eiffel Tower", "Berlin Wall Tower"),
             PromptPair("b", "The Rome Tower is in the city of", "The Berlin Tower is in the city of", " Rome",
                        " Berlin", "Rome Tower", "Berlin Tower"),
             PromptPair("c", "The Paris Tower is in the city of", "The Berlin Tower is in the city of", " Paris",
                        " Berlin", "Paris Tower", "Berlin Tower")]
    first = patching_sweep(tm, pairs[:2], tmp_path, sites=["resid_post", "mlp_out"], progress=False)
    assert first.n_pairs == 2
    r = patching_sweep(tm, pairs, tmp_path, sites=["resid_post", "mlp_out"], progress=False)
    assert r.n_pairs == 3 and len((tmp_path / "items.jsonl").read_text().splitlines()) == 3
    # the last resid_post at the last token restores everything: normalised effect 1 in every pair
    assert r.mean["resid_post"]["last"][-1] == pytest.approx(1.0, abs=1e-4)
    assert r.se["resid_post"]["last"][-1] == pytest.approx(0.0, abs=1e-4)
    st = r.stats["mlp_out"]["last"]
    assert all(lo - 1e-9 <= m <= hi + 1e-9 for lo, m, hi in zip(st["ci_low"], r.mean["mlp_out"]["last"], st["ci_high"]))
    assert r.stats["settings"]["n_items"] == 3 and r.stats["settings"]["correction"] == "maxT"
    again = PatchingSweepResult.load(tmp_path)
    assert again.mean == json.loads(json.dumps(r.mean))
    assert again.figure(mask_nonsignificant=True) is not None
    with pytest.raises(InterventionError, match="head"):
        patching_sweep(tm, pairs, tmp_path / "x", sites=["head"], progress=False)


def test_cells_in_the_shared_prefix_take_the_base_metric_without_a_row(tm):
    """Positions the two prompts share hold identical activations in both runs (causal model):
    those cells equal the base metric and are not run; the one-at-a-time reference above checks
    their values against real hooked forwards."""
    r = activation_patching(tm, CLEAN, CORRUPT, sites=["resid_pre", "head"], heads=[0, 1], **KW)
    n_layers, n = tm.n_layers, len(r.tokens)
    assert r.tokens[0] == r.corrupt_tokens[0] and r.tokens[1] != r.corrupt_tokens[1]
    assert r.settings["shared_prefix"] == 1
    assert r.settings["cells"] == n_layers * n * 3
    assert r.settings["cells_run"] == n_layers * (n - 1) * 3
    assert (r.grid("resid_pre")[:, 0] == r.corrupt_metric).all()
    same = activation_patching(tm, CLEAN, CLEAN, sites="resid_pre", **KW)
    assert same.settings["cells_run"] == 0 and (same.grid("resid_pre") == same.corrupt_metric).all()
    # a patch over all positions at once touches the differing ones: it runs
    allpos = activation_patching(tm, CLEAN, CORRUPT, sites="head", heads=[0], per_position=False, **KW)
    assert allpos.settings["cells_run"] == allpos.settings["cells"] == n_layers
