"""Causal tracing: ROME invariants, a one-cell-at-a-time reference, engines, sweeps, bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import tiny
from interp.errors import InterventionError, PromptError, SiteError, SpanNotFoundError
from interp.mediation import CausalTraceResult, causal_trace, noise_level, trace_dataset
from interp.mediation.causal_trace import trace_sweep_from_log
from interp.mediation.causal_trace import fact_categories, grid_restorations, prepare_trace, restoration_probs
from interp.windows import window_layers

PROMPT = "The Eiffel Tower is in the city of"
SUBJ = "Eiffel Tower"


@pytest.fixture(scope="module")
def tm():
    return tiny("llama", "hf", n_layers=3)


def test_restore_all_gives_clean_and_nothing_gives_corrupt(tm):
    setup = prepare_trace(tm, PROMPT, SUBJ, samples=3, noise=0.5, seed=1)
    n = len(setup.tokens)
    everything = [("embed", None, list(range(n)))]
    layer0_all = [("resid_post", 0, list(range(n)))]
    last_state = [("resid_post", tm.n_layers - 1, [n - 1])]
    for skip in (True, False):
        p_clean, p_corrupt, p, path = restoration_probs(tm, setup, [[], everything, layer0_all, last_state],
                                                        max_rows=5, skip=skip)
        assert path == ("skip" if skip else "plan")
        assert abs(p_corrupt - p_clean) > 1e-7  # the noise does something
        assert float(p[0]) == pytest.approx(p_corrupt, abs=1e-7)  # restoring nothing
        for v in p[1:]:
            assert float(v) == pytest.approx(p_clean, abs=1e-6)  # restoring every (needed) state


def test_grid_invariants(tm):
    r = causal_trace(tm, PROMPT, SUBJ, samples=2, noise=0.5, window=2)
    n, L = len(r.tokens), tm.n_layers
    assert r.subject_range == [1, 4]
    for k in r.kinds:
        g = r.grid(k)
        assert g.shape == (L, n)
        assert torch.allclose(g[:, 0], torch.full((L,), r.p_corrupt, dtype=g.dtype))  # before the subject
    # ROME sanity: restoring the last layer's output at the last token gives IE = TE
    assert r.grid("resid")[-1, -1].item() == pytest.approx(r.p_clean, abs=1e-6)
    assert r.grid("resid", effect=True)[-1, -1].item() == pytest.approx(r.total_effect, abs=1e-6)


def _naive_trace(hf, tokenizer, prompt, subj_range, noise, target, kind, window):
    """One forward per (cell, sample) with plain PyTorch hooks — the reference."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    blocks = hf.model.layers
    L, n = len(blocks), ids.shape[1]
    b, e = subj_range
    clean = {}
    hooks = []
    for l, blk in enumerate(blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, l=l: clean.__setitem__(("resid", l), o[0] if isinstance(o, tuple) else o)))
        hooks.append(blk.mlp.register_forward_hook(lambda m, i, o, l=l: clean.__setitem__(("mlp", l), o)))
        hooks.append(blk.self_attn.register_forward_hook(lambda m, i, o, l=l: clean.__setitem__(("attn", l), o[0])))
    with torch.no_grad():
        hf(ids)
    for h in hooks:
        h.remove()

    def run(sample, restore):
        hs = [hf.model.embed_tokens.register_forward_hook(
            lambda m, i, o: torch.cat([o[:, :b], o[:, b:e] + noise[sample], o[:, e:]], 1))]
        for (k, l, t) in restore:
            mod = {"resid": blocks[l], "mlp": blocks[l].mlp, "attn": blocks[l].self_attn}[k]

            def fn(m, i, o, k=k, l=l, t=t):
                x = o[0] if isinstance(o, tuple) else o
                x = x.clone()
                x[:, t] = clean[(k, l)][:, t]
                return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x
            hs.append(mod.register_forward_hook(fn))
        with torch.no_grad():
            p = hf(ids).logits[0, -1].float().softmax(-1)[target].item()
        for h in hs:
            h.remove()
        return p

    S = noise.shape[0]
    grid = torch.zeros(L, n)
    for l in range(L):
        lays = [l] if kind == "resid" else window_layers(l, window, L)
        for t in range(n):
            grid[l, t] = sum(run(s, [(kind, k, t) for k in lays]) for s in range(S)) / S
    p_corrupt = sum(run(s, []) for s in range(S)) / S
    return grid, p_corrupt


def test_grid_equals_one_cell_at_a_time_reference(tm):
    r = causal_trace(tm, PROMPT, SUBJ, samples=2, noise=0.7, window=2, seed=3, max_rows=7)
    setup = prepare_trace(tm, PROMPT, SUBJ, samples=2, noise=0.7, seed=3)
    for kind in ("resid", "mlp", "attn"):
        ref, pc = _naive_trace(tm.hf, tm.tokenizer, PROMPT, r.subject_range, setup.noise, r.target_id, kind, 2)
        assert r.p_corrupt == pytest.approx(pc, abs=1e-6)
        assert torch.allclose(r.grid(kind).float(), ref, atol=1e-6), kind


def test_engines_agree_and_seed_is_deterministic():
    grids = {}
    for eng in ("hf", "transformer_lens", "nnsight"):
        m = tiny("llama", eng, n_layers=2)
        grids[eng] = causal_trace(m, PROMPT, SUBJ, samples=2, noise=0.5, window=2, seed=5)
    ref = grids["hf"]
    for eng, r in grids.items():
        for k in ref.kinds:
            assert torch.allclose(r.grid(k), ref.grid(k), atol=1e-4), (eng, k)
        assert r.p_corrupt == pytest.approx(ref.p_corrupt, abs=1e-4)
    m = tiny("llama", "hf", n_layers=2)
    again = causal_trace(m, PROMPT, SUBJ, samples=2, noise=0.5, window=2, seed=5)
    for k in ref.kinds:
        assert torch.equal(again.grid(k), ref.grid(k))
    other = causal_trace(m, PROMPT, SUBJ, samples=2, noise=0.5, window=2, seed=6)
    assert other.p_corrupt != ref.p_corrupt


def test_gpt2_trace_runs_and_satisfies_ie_equals_te():
    m = tiny("gpt2", "hf", n_layers=2)
    r = causal_trace(m, PROMPT, SUBJ, kinds=("resid",), samples=2, noise=0.5)
    assert r.grid("resid")[-1, -1].item() == pytest.approx(r.p_clean, abs=1e-6)


def test_save_load_json_fields_and_figure(tm, tmp_path):
    r = causal_trace(tm, PROMPT, SUBJ, samples=2, noise="3sd", window=2)
    r.save(tmp_path)
    d = json.loads((tmp_path / "trace.json").read_text())
    for key in ("tokens", "subject_range", "p_clean", "p_corrupt", "p_restored", "indirect_effect", "settings", "seed"):
        assert key in d
    assert len(d["p_restored"]["mlp"]) == tm.n_layers and len(d["p_restored"]["mlp"][0]) == len(d["tokens"])
    assert d["settings"]["window"] == 2 and d["settings"]["noise_level"] > 0
    back = CausalTraceResult.load(tmp_path)
    assert back.p_restored == r.p_restored and back.subject_range == r.subject_range
    fig = back.figure()
    assert len(fig.data) == 3


def test_noise_3sd_uses_subject_embeddings(tm):
    subs = ["Eiffel Tower", "Barack Obama", "Toyota"]
    ids = sum((tm.tokenizer(s, add_special_tokens=False)["input_ids"] for s in subs), [])
    want = 3 * tm.adapter.W_E[torch.tensor(ids)].float().std().item()
    assert noise_level(tm, subs) == pytest.approx(want)
    assert noise_level(tm) == pytest.approx(3 * tm.adapter.W_E.float().std().item())
    s = prepare_trace(tm, PROMPT, SUBJ, samples=2, noise="3sd", noise_subjects=subs)
    assert s.noise_level == pytest.approx(want)


def test_bad_input(tm):
    with pytest.raises(SpanNotFoundError, match="does not occur"):
        causal_trace(tm, PROMPT, "Colosseum", samples=1)
    with pytest.raises(PromptError, match="tokenises to nothing"):
        causal_trace(tm, PROMPT, SUBJ, target="", samples=1)
    with pytest.raises(InterventionError, match="window"):
        causal_trace(tm, PROMPT, SUBJ, window=0)
    with pytest.raises(InterventionError, match="samples"):
        causal_trace(tm, PROMPT, SUBJ, samples=0)
    with pytest.raises(SiteError, match="unknown trace kind"):
        causal_trace(tm, PROMPT, SUBJ, kinds=("mlpp",))
    with pytest.raises(SiteError, match="'hidden' is ROME's name of 'resid'"):
        causal_trace(tm, PROMPT, SUBJ, kinds=("hidden",))


def test_subject_twice_first_occurrence_or_index(tm):
    p = "Paris is nice and Paris is big, Paris"
    first = prepare_trace(tm, p, "Paris", samples=1, noise=0.1)
    second = prepare_trace(tm, p, "Paris", samples=1, noise=0.1, occurrence=1)
    assert first.subject_range[0] == 0
    assert second.subject_range[0] > first.subject_range[0]
    with pytest.raises(SpanNotFoundError):
        prepare_trace(tm, p, "Paris", samples=1, noise=0.1, occurrence=5)


def test_multi_token_target_warns_and_is_recorded(tm):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = causal_trace(tm, PROMPT, SUBJ, target=" Parisienne Cathedral", kinds=("resid",), samples=1, noise=0.2)
    assert r.target_multi_token and any("first token" in str(x.message) for x in w)


def test_context_subject_in_question(tm):
    ctx = "The Eiffel Tower is a landmark in Paris."
    r = causal_trace(tm, PROMPT, SUBJ, context=ctx, kinds=("resid",), samples=1, noise=0.3)
    toks = r.tokens
    b, e = r.subject_range
    cb, ce = r.context_range
    assert ce <= b  # subject range points into the question, after the context
    assert "".join(toks[b:e]).strip() == SUBJ
    assert r.traced_positions[0] > ce and r.settings["corrupt"] == "subject+context"
    assert set(range(cb, ce)) <= set(r.settings["corrupt_positions"])


def test_categories():
    c = fact_categories([1, 4], 9)
    assert c == {"first_subject": [1], "middle_subject": [2], "last_subject": [3], "first_subsequent": [4],
                 "further": [5, 6, 7], "last": [8]}
    assert "middle_subject" not in fact_categories([0, 1], 4)


def test_grid_restoration_windows():
    assert window_layers(0, 10, 30) == list(range(0, 5))
    assert window_layers(15, 10, 30) == list(range(10, 20))
    assert window_layers(29, 10, 30) == list(range(24, 30))
    assert window_layers(3, 1, 30) == [3]
    cells = grid_restorations("mlp", 4, [0, 1], 2)
    assert cells[0] == (0, 0, [("mlp_out", 0, [0])]) and cells[2][2] == [("mlp_out", 0, [0]), ("mlp_out", 1, [0])]


def test_dataset_sweep_reports_bad_rows_and_resumes(tm, tmp_path):
    rows = [{"prompt": PROMPT, "subject": SUBJ, "attribute": "Paris"},
            {"prompt": "Toyota is a company from", "attribute": "Japan"},  # no subject
            {"prompt": "The Louvre is a museum in", "subject": "Louvre", "attribute": "Paris"},
            {"prompt": "Mount Fuji is in", "subject": "Everest", "attribute": "Japan"}]  # subject not in prompt
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "sweep"
    with pytest.warns(UserWarning, match="row 1"):
        r = trace_dataset(tm, path, out, samples=1, window=2, noise=0.3, min_p=0.0, progress=False)
    skipped_rows = sorted(s[0] for s in r.skipped)
    assert skipped_rows == [1, 3] and "subject" in dict((s[0], s[1]) for s in r.skipped)[1]
    assert r.n_known == 2 and r.n_traced == 2
    assert set(r.aie["resid"]) >= {"first_subject", "last", "further"}
    assert len(r.aie["mlp"]["last"]) == tm.n_layers and r.se["mlp"]["last"][0] >= 0
    lines = (out / "items.jsonl").read_text().splitlines()
    with pytest.warns(UserWarning):
        r2 = trace_dataset(tm, path, out, samples=1, window=2, noise=0.3, min_p=0.0, progress=False)
    assert (out / "items.jsonl").read_text().splitlines() == lines  # nothing recomputed
    assert r2.aie == r.aie
    assert r2.figure() is not None
    # per-cell statistics over the facts: CI around the mean, an exact sign-flip p (2 facts: 4 flips)
    st = r.stats["resid"]["last"]
    for lo, m, hi in zip(st["ci_low"], r.aie["resid"]["last"], st["ci_high"]):
        assert lo - 1e-9 <= m <= hi + 1e-9
    assert r.stats["settings"]["exact"] and r.stats["settings"]["correction"] == "maxT"
    assert all(0.5 <= p <= pa <= 1 for p, pa in zip(st["p"], st["p_adj"]))
    masked = r2.figure(mask_nonsignificant=True)
    import math
    assert all(math.isnan(v) for row in masked.data[0].z for v in row)  # nothing survives 4 flips
    # the same result from the log alone: no model, nothing written there; counts from trace_sweep.json
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    d = trace_sweep_from_log(out)
    assert (d.aie, d.se, d.stats, d.peaks, d.n_facts) == (r.aie, r.se, r.stats, r.peaks, r.n_facts)
    assert (d.n_rows, d.n_known, d.n_traced, d.skipped) == (r.n_rows, r.n_known, r.n_traced, r.skipped)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    running = tmp_path / "running"  # a sweep still running: no trace_sweep.json yet
    running.mkdir()
    for f in ("config.json", "items.jsonl"):
        (running / f).write_bytes((out / f).read_bytes())
    with open(running / "items.jsonl", "a") as f:
        f.write('{"id": "row9", "result": {"tor')  # a torn last line is skipped
    d2 = trace_sweep_from_log(running)
    assert d2.aie == r.aie and d2.n_known == d2.n_traced == 2 and "not recorded" in d2.settings["counts"]
    from interp.cli import main
    assert main(["trace", "--from-log", str(running), "--out", str(tmp_path / "drawn"), "--json"]) == 0
    assert (tmp_path / "drawn" / "trace_sweep.json").is_file()


def test_dataset_sweep_counts_errors_and_goes_on(tm, tmp_path, capsys):
    long = "Paris " * 200 + "is the city where the Eiffel Tower is, and it is in"  # > the tiny model's context
    rows = [{"prompt": PROMPT, "subject": SUBJ, "attribute": "Paris"},
            {"prompt": long, "subject": "Eiffel Tower", "attribute": "France"},
            {"prompt": "The Louvre is a museum in", "subject": "Louvre", "attribute": "Paris"}]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(rows))
    r = trace_dataset(tm, path, tmp_path / "sweep", samples=1, window=2, noise=0.3, min_p=0.0, progress=False)
    assert r.n_traced == 2 and len(r.errors) == 1
    e = r.errors[0]
    assert e["row"] == 1 and "Eiffel Tower" in e["fact"] and "PromptError" in e["error"] and "context" in e["error"]
    assert "trace sweep: row 1" in capsys.readouterr().err
    again = type(r).load(tmp_path / "sweep")
    assert again.errors == r.errors


@pytest.mark.slow
def test_default_model_trace_ie_equals_te(default_model):
    r = causal_trace(default_model, "The Eiffel Tower is located in the city of", "Eiffel Tower",
                     kinds=("resid",), samples=2, positions=[4, -1])
    assert r.target.strip() == "Paris" and r.p_clean > 0.3
    assert r.p_corrupt < r.p_clean
    assert r.grid("resid")[-1, -1].item() == pytest.approx(r.p_clean, abs=1e-5)


# ----------------------------------------------------------------------------- unknown targets
def test_unknown_target_warns_with_a_settable_threshold(tm, tmp_path):
    from interp.errors import UnknownTargetWarning
    top = causal_trace(tm, PROMPT, SUBJ, kinds=("resid",), samples=1, noise=0.2, positions=[-1], min_p_clean=None)
    assert top.unknown_target is None and top.target_is_top1
    other = " Hawaii" if top.target != " Hawaii" else " Rome"
    with pytest.warns(UnknownTargetWarning, match=f"causal_trace: the target {other!r} is not what the model"):
        r = causal_trace(tm, PROMPT, SUBJ, other, kinds=("resid",), samples=1, noise=0.2, positions=[-1])
    assert not r.target_is_top1 and "not the model's top-1" in r.unknown_target
    assert r.settings["min_p_clean"] == 0.05
    with pytest.warns(UnknownTargetWarning, match="p_clean = .* < 1.0"):
        r = causal_trace(tm, PROMPT, SUBJ, kinds=("resid",), samples=1, noise=0.2, positions=[-1], min_p_clean=1.0)
    assert r.unknown_target.startswith("p_clean")
    # a sweep counts them (one warning at the end): the tiny model predicts none of the attributes
    rows = [{"prompt": PROMPT, "subject": SUBJ, "attribute": "Paris"},
            {"prompt": "The Louvre is a museum in", "subject": "Louvre", "attribute": "Paris"}]
    (tmp_path / "f.json").write_text(json.dumps(rows))
    with pytest.warns(UnknownTargetWarning, match="2 of 2 traced facts"):
        sw = trace_dataset(tm, tmp_path / "f.json", tmp_path / "s", samples=1, window=2, noise=0.3, min_p=0.0,
                           min_p_clean=None, progress=False)
    assert sw.n_traced == 2 and sw.n_unknown_target == 2


@pytest.mark.slow
def test_default_model_unknown_fact_warns(default_model):
    """The issue's case: ' Hawaii' for the Eiffel Tower has p_clean ≈ 0.007 — a heatmap of noise."""
    from interp.errors import UnknownTargetWarning
    with pytest.warns(UnknownTargetWarning, match="not the model's top-1 prediction and p_clean = "):
        r = causal_trace(default_model, "The Eiffel Tower is located in the city of", "Eiffel Tower", " Hawaii",
                         kinds=("resid",), samples=1, positions=[-1])
    assert r.p_clean < 0.05 and not r.target_is_top1
