"""Work skipping (interp.skipping): derived rows started at their first edit give the numbers of
running every row in full, on every supported architecture, and really compute less."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp import skipping
from interp.capabilities import SKIP_WORK
from interp.errors import InterventionError
from interp.interventions import InterventionPlan

ARCHS = ["llama", "mistral", "qwen2", "gpt2"]
PROMPT = "The Eiffel Tower is located in the city of"   # 10+ tokens: longer than the sliding window 4


def _trace_like(m, prompt=PROMPT, samples=2, seed=0):
    """Clean row, noised rows derived from it, restorations derived from the noised rows."""
    g = torch.Generator().manual_seed(seed)
    b = m.tokenize([prompt])
    n, L, d = b.lengths[0], m.n_layers, m.adapter.d_model
    spec = []
    for _ in range(samples):
        spec.append((0, [("add", "embed", None, [1, 2], torch.randn(2, d, generator=g))]))
    for s in range(samples):
        for l in range(L):
            for t in range(1, n):
                win = list(range(max(0, l - 1), min(L, l + 1)))
                spec.append((1 + s, [("src", "resid_post", l, [t])]))
                spec.append((1 + s, [("src", "mlp_out", k, [t]) for k in win]))
                spec.append((1 + s, [("src", "attn_out", k, [t]) for k in win]))
    return b, spec


def _build(b, spec, rows_of=None):
    plan = InterventionPlan(b.select([0] * (1 + len(spec))) if rows_of is None else b.select(rows_of))
    for r, (parent, edits) in enumerate(spec, start=1):
        if parent is not None:
            plan.derive(r, parent)
        for e in edits:
            kind = e[0]
            if kind == "src":
                _, site, layer, pos = e[:4]
                plan.set(site, layer, r, pos, source_row=e[4] if len(e) > 4 else 0)
            elif kind == "block":
                _, layer, q, keys, head = e
                plan.block(layer, r, q, keys, head=head)
            elif kind == "unit":
                _, site, layer, pos, val, unit = e
                plan.set(site, layer, r, pos, val, unit=unit)
            else:
                op, site, layer, pos, val = e
                getattr(plan, op)(site, layer, r, pos, val)
    return plan


def _compare(m, plan, max_rows=7, atol=1e-5):
    sk = m.run(plan=plan, max_rows=max_rows)
    full = m.run(plan=plan, skip=False, max_rows=max_rows)
    assert sk.extra["path"] == "skip" and full.extra["path"] == "plan"
    assert (sk.logits - full.logits).abs().max() < atol
    return sk, full


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_rows_equal_full_rows(arch):
    m = tiny(arch)
    b, spec = _trace_like(m)
    _, full = _compare(m, _build(b, spec))
    clean = full.logits[0]
    assert ((full.logits - clean).abs().amax(-1) > 1e-4).float().mean() > 0.5   # the edits do something


@pytest.mark.parametrize("arch", ARCHS)
def test_knockout_and_unit_edits_equal_full_rows(arch):
    """Blocks (all heads / one head), per-head and per-neuron writes, resid_mid writes, a write
    of the last layer's output, a row without own edits, and a grandchild that starts at an
    earlier column than its parent."""
    m = tiny(arch)
    a = m.adapter
    b = m.tokenize([PROMPT])
    n, L = b.lengths[0], m.n_layers
    spec = [(0, [("block", l, [n - 1], [1, 2, 3], None)]) for l in range(L)]
    spec += [(0, [("block", 1, [n - 1], [0, 1], h)]) for h in (0, a.n_heads - 1)]
    spec += [(0, [("unit", "attn_z", 1, [5], torch.ones(a.d_head), 2)]),
             (0, [("unit", "mlp_post", 0, [7, 8], 3.0, 11)]),
             (0, [("set", "resid_mid", 1, [6], torch.zeros(a.d_model))]),
             (0, [("scale", "resid_post", L - 1, [n - 1], 0.5)]),
             (0, []),
             (0, [("add", "resid_pre", 1, [6], torch.full((a.d_model,), 0.3))])]
    parent = len(spec)          # the last row above (1-based row index = len(spec))
    spec += [(parent, [("add", "mlp_out", 2, [3], torch.full((a.d_model,), -0.2))]),   # earlier column
             (parent, [("add", "attn_out", 0, [8], torch.full((a.d_model,), 0.1))])]    # earlier layer
    _compare(m, _build(b, spec), max_rows=4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patching_rows_two_roots_and_padding(arch):
    """Two roots of equal length (patching) and two more roots of another length (left padding):
    derived rows copy from one root and derive from another."""
    m = tiny(arch)
    prompts = ["The Eiffel Tower is in the city of", "The Berlin Wall Tower is in the city of", "Cats sleep"]
    b = m.tokenize(prompts)
    assert b.lengths[0] == b.lengths[1] != b.lengths[2]
    n, L = b.lengths[0], m.n_layers
    spec = [(None, []), (None, [])]                      # rows 1, 2: corrupt prompt, short prompt
    for l in range(L):
        for p in range(n):
            spec.append((1, [("src", "resid_pre", l, [p], 0)]))
    spec.append((2, [("add", "resid_pre", 1, [-1], torch.full((m.adapter.d_model,), 0.5))]))
    rows_of = [0, 1, 2] + [1] * (L * n) + [2]
    _compare(m, _build(b, spec, rows_of), max_rows=5)


def test_skipping_computes_less():
    """Count the (row, position) pairs each decoder layer computes: a trace grid needs far fewer
    than its rows × positions × layers."""
    m = tiny("llama", n_layers=6)
    b, spec = _trace_like(m, samples=2)
    plan = _build(b, spec)
    skipped = sum(_block_work(m, plan)[1])
    full = sum(_block_work(m, plan, skip=False)[1])
    assert full >= plan.batch.size * plan.batch.width * m.n_layers   # (+ the copied-from row per chunk)
    assert skipped < 0.35 * full, (skipped, full)


def _block_work(m, plan, **run_kw):
    """``(run output, (row, position) pairs of every decoder-layer call in order)`` of one run."""
    seen = []
    hs = [blk.register_forward_hook(lambda mod, i, o: seen.append(o.shape[0] * o.shape[1]))
          for blk in m.adapter.blocks]
    try:
        out = m.run(plan=plan, max_rows=64, **run_kw)
    finally:
        for h in hs:
            h.remove()
    return out, seen


def _last_layer_calls(m, plan, cap):
    """(rows, columns) of every call of the last decoder layer in a skipping run."""
    seen = []
    h = m.adapter.blocks[-1].register_forward_hook(lambda mod, i, o: seen.append((o.shape[0], o.shape[1])))
    try:
        m.run(plan=plan, max_rows=cap)
    finally:
        h.remove()
    return seen


def test_max_rows_bounds_token_positions_per_chunk(monkeypatch):
    """``max_rows`` bounds a full forward's rows; rows that compute the last columns only come
    in chunks holding as many token positions (no chunk ever holds more)."""
    m = tiny("llama", n_layers=4)
    b, spec = _trace_like(m, samples=1)
    plan = _build(b, spec)
    W, cap = plan.batch.width, 8
    with monkeypatch.context() as mp:                     # every column its own chunks
        mp.setattr(skipping, "MERGE_WORK", 0.0)
        seen = _last_layer_calls(m, plan, cap)
    assert max(r * w for r, w in seen) <= cap * W
    assert max(r for r, w in seen if w == 1) > cap      # the last column's rows share one chunk
    # narrow chunks merged into wider ones: still no chunk above the bound, the narrowest many rows
    seen = _last_layer_calls(m, plan, cap)
    narrowest = min(w for r, w in seen)
    assert 1 < narrowest < W
    assert max(r * w for r, w in seen) <= cap * W
    assert max(r for r, w in seen if w == narrowest) > cap


def test_merging_narrow_chunks_stays_within_its_work_budget(monkeypatch):
    """Merging the narrowest chunks into wider ones adds at most MERGE_WORK of the derived
    rows' work and really merges (fewer layer calls); the numbers are the same."""
    m = tiny("llama", n_layers=6)
    b, spec = _trace_like(m, samples=2)
    plan = _build(b, spec)

    def work():
        out, seen = _block_work(m, plan)
        return out.logits, sum(seen[m.n_layers:]), len(seen)    # (the roots' forward first)

    with monkeypatch.context() as mp:
        mp.setattr(skipping, "MERGE_WORK", 0.0)
        lg0, w0, calls0 = work()
    lg, w, calls = work()
    assert w0 < w <= (1 + skipping.MERGE_WORK) * w0, (w0, w)
    assert calls < calls0
    assert (lg - lg0).abs().max() < 1e-5


def test_engines_without_the_capability_run_in_full():
    hf = tiny("llama", "hf")
    b, spec = _trace_like(hf, samples=1)
    plan = _build(b, spec)
    ref = hf.run(plan=plan, skip=False).logits
    for engine in ("transformer_lens", "nnsight"):
        m = tiny("llama", engine)
        assert not m.supports(SKIP_WORK)
        out = m.run(plan=plan)
        assert out.extra["path"] == "plan"
        assert (out.logits - ref).abs().max() < 1e-4
    # reads, all-position logits and gradients take the full path even on hf
    assert hf.run(plan=plan, reads=[("resid_post", 0)], positions=[-1]).extra["path"] == "plan"
    assert hf.run(plan=plan, logits="all").extra["path"] == "plan"


def test_bad_derivations_are_refused():
    m = tiny("llama")
    b = m.tokenize(["The cat sat on the mat", "A dog ran in the park today"])
    for row, parent, msg in [(1, 0, "different prompts"), (0, 0, "own parent"), (0, 5, "parent 5")]:
        plan = InterventionPlan(b)
        plan.derive(row, parent)
        with pytest.raises(InterventionError, match=msg):
            m.run(plan=plan)
    plan = InterventionPlan(b.select([0, 0, 0]))
    plan.derive(1, 2).derive(2, 1)
    with pytest.raises(InterventionError, match="cycle"):
        m.run(plan=plan)


def test_token_logits_reduction_computes_only_its_tokens(monkeypatch):
    """A ``token_logits`` reduction gives the numbers of the same function of the full logits,
    on both paths; the skipping path's LM head computes only those tokens' columns."""
    from interp.shipped import token_logits
    m = tiny("llama", n_layers=4)
    b, spec = _trace_like(m, samples=1)
    plan = _build(b, spec)
    ref = m.run(plan=plan, skip=False, logits=lambda lg: lg[:, 5] - lg[:, 7]).logits
    fn = token_logits([5, 7], lambda lg: lg[:, 0] - lg[:, 1])
    widths = []
    unembed = m.engine.unembed
    monkeypatch.setattr(m.engine, "unembed", lambda h, tokens=None: widths.append(
        (out := unembed(h, tokens)).shape[-1]) or out)
    sk = m.run(plan=plan, logits=fn)
    assert sk.extra["path"] == "skip" and widths and set(widths) == {2}
    assert (sk.logits - ref).abs().max() < 1e-5
    assert (m.run(plan=plan, skip=False, logits=fn).logits - ref).abs().max() < 1e-6


def test_token_logits_refuses_bad_token_ids():
    from interp.errors import LayerIndexError
    from interp.shipped import token_logits
    m = tiny("llama", n_layers=2)
    for bad in ([], [-1, 3], ["a"], [1.5]):
        with pytest.raises(ValueError, match="non-empty list of token ids"):
            token_logits(bad, lambda lg: lg[:, 0])
    V = m.adapter.vocab_size
    fn = token_logits([V], lambda lg: lg[:, 0])
    with pytest.raises(IndexError, match=f"token id {V} is outside the vocabulary of {V} logits"):
        m.run(["The Eiffel Tower"], logits=fn)
    with pytest.raises(LayerIndexError, match="outside the vocabulary"):
        m.adapter.unembed(torch.zeros(1, m.adapter.d_model), tokens=[V])
