"""Batched intervention plans: each row's edits equal the same edit run alone; chunking is exact."""

import pytest
import torch

from conftest import tiny
from interp.errors import InterventionError, LayerIndexError, SiteError
from interp.interventions import InterventionPlan

PROMPTS = ["The cat sat on the mat", "A dog ran in the park", "Birds fly south"]


def _single(m, prompt, edit_fn, **kw):
    b = m.tokenize([prompt])
    plan = InterventionPlan(b)
    edit_fn(plan, 0)
    return m.run(plan=plan, **kw)


@pytest.mark.parametrize("engine", ["hf", "transformer_lens", "nnsight"])
def test_rows_carry_independent_edits(engine):
    m = tiny("llama", engine)
    d = m.adapter.d_model
    v = torch.linspace(-1, 1, d)
    edits = [
        lambda p, r: p.set("resid_post", 1, r, [-1], v),
        lambda p, r: p.add("mlp_out", 0, r, [0, 1], v),
        lambda p, r: p.scale("mlp_post", 2, r, [-1], 3.0, unit=7),
    ]
    b = m.tokenize([PROMPTS[0]] * 3)
    plan = InterventionPlan(b)
    for r, f in enumerate(edits):
        f(plan, r)
    batched = m.run(plan=plan, reads=["resid_post"], positions=[-1])
    for r, f in enumerate(edits):
        single = _single(m, PROMPTS[0], f, reads=["resid_post"], positions=[-1])
        assert (batched.logits[r] - single.logits[0]).abs().max() < 1e-4
    assert torch.allclose(batched.cache["resid_post", 1][0, 0], v)       # set is visible when read
    clean = m.run(PROMPTS[0])
    assert all((batched.logits[r] - clean.logits[0]).abs().max() > 1e-3 for r in range(3))


def test_source_row_copies_and_chunking_keeps_sources():
    m = tiny("gpt2")
    prompts = ["The cat sat on the mat", "A dog ran in the sun"]  # equal token length
    b = m.tokenize(prompts)
    assert b.lengths[0] == b.lengths[1]
    rows = b.select([0] + [1] * 6)
    plan = InterventionPlan(rows)
    for r in range(1, 7):
        plan.set("resid_pre", (r - 1) % m.n_layers, r, [1, 2], source_row=0)
    whole = m.run(plan=plan, reads=["resid_post"], positions=[-1])
    chunked = m.run(plan=plan, reads=["resid_post"], positions=[-1], max_rows=2)
    assert (whole.logits - chunked.logits).abs().max() < 1e-5
    assert (whole.cache.stack("resid_post") - chunked.cache.stack("resid_post")).abs().max() < 1e-5
    # patching every position of layer 0's input from row 0 reproduces row 0 entirely
    full = InterventionPlan(b.select([0, 1]))
    full.set("resid_pre", 0, 1, list(range(b.lengths[0])), source_row=0)
    out = m.run(plan=full)
    assert (out.logits[1] - out.logits[0]).abs().max() < 1e-5


def test_chunked_copies_carry_the_source_rows_own_edits():
    """A copied-from row keeps its own edits in every chunk (a chunk used to pull it in without
    them, so rows copied the unedited value once the plan was split)."""
    m = tiny("llama")
    d = m.adapter.d_model
    b = m.tokenize([PROMPTS[0]])
    plan = InterventionPlan(b.select([0] * 6))
    plan.add("embed", None, 0, [0, 1, 2], torch.full((d,), 3.0))      # the source row's own edit
    for r in range(1, 6):
        plan.set("resid_pre", r % m.n_layers, r, [0, 1, 2], source_row=0)
    whole = m.run(plan=plan, skip=False)
    for max_rows in (1, 2, 4):
        chunked = m.run(plan=plan, max_rows=max_rows, skip=False)
        assert (chunked.logits - whole.logits).abs().max() < 1e-5
    assert (whole.logits[3] - m.run(PROMPTS[0]).logits[0]).abs().max() > 1e-3   # the copy carries the edit


def test_resid_mid_write_reaches_the_residual():
    m = tiny("llama")
    b = m.tokenize([PROMPTS[1]])
    plan = InterventionPlan(b)
    plan.set("resid_mid", 1, 0, [-1], torch.zeros(m.adapter.d_model))
    out = m.run(plan=plan, reads=["resid_mid", "mlp_out", "resid_post"], layers=[1], positions=[-1])
    c = out.cache
    assert c["resid_mid", 1].abs().max() == 0
    assert torch.allclose(c["resid_post", 1], c["mlp_out", 1], atol=1e-6)   # post = mid(=0) + mlp


def test_block_edges_and_refusals():
    m = tiny("llama")
    b = m.tokenize([PROMPTS[0]])
    n = b.lengths[0]
    plan = InterventionPlan(b)
    plan.block(0, 0, [-1], list(range(n - 1)))   # last token may only see itself
    out = m.run(plan=plan, reads=[("attn_pattern", 0)], positions=[-1])
    pat = out.cache["attn_pattern", 0][0, 0]       # head axis, key axis
    assert torch.allclose(pat[:, -1], torch.ones(m.adapter.n_heads)) and pat[:, :-1].abs().max() == 0
    bad = InterventionPlan(b)
    bad.block(0, 0, [-1], list(range(n)))
    with pytest.raises(InterventionError, match="remove every key"):
        m.run(plan=bad)


def test_bad_edits_have_clear_errors():
    m = tiny("llama")
    b = m.tokenize([PROMPTS[0]])
    cases = [
        (lambda p: p.set("resid_post", 9, 0, [0], torch.zeros(48)), LayerIndexError, "layer 9 out of range"),
        (lambda p: p.set("nope", 0, 0, [0], 0.0), SiteError, "valid sites"),
        (lambda p: p.set("attn_pattern", 0, 0, [0], 0.0), SiteError, "read-only"),
        (lambda p: p.set("resid_post", 0, 0, [0], torch.zeros(7)), InterventionError, "does not fit"),
        (lambda p: p.set("mlp_post", 0, 0, [0], 1.0, unit=999), LayerIndexError, "neuron 999"),
        (lambda p: p.set("resid_post", 0, 5, [0], torch.zeros(48)), InterventionError, "row 5"),
        (lambda p: p.set("resid_post", 0, 0, [0]), InterventionError, "value or a source_row"),
        (lambda p: p.set("resid_post", 0, 0, [40], torch.zeros(48)), LayerIndexError, "position 40"),
        # keys / values have the model's KV heads (tiny llama: 2), queries its heads (6)
        (lambda p: p.set("attn_k", 0, 0, [0], torch.zeros(8), unit=2), LayerIndexError, "kv_head 2 out of range 0..1"),
        (lambda p: p.set("attn_q", 0, 0, [0], torch.zeros(8), unit=6), LayerIndexError, "head 6 out of range 0..5"),
    ]
    for build, exc, msg in cases:
        plan = InterventionPlan(b)
        build(plan)
        with pytest.raises(exc, match=msg):
            m.run(plan=plan)
    with pytest.raises(SiteError, match="valid sites"):
        m.run(PROMPTS[0], reads=["resid_post_typo"])
    with pytest.raises(LayerIndexError, match="3 layers"):
        m.run(PROMPTS[0], reads=[("resid_post", 3)])


def test_keep_grad_gives_activation_gradients():
    m = tiny("llama")
    out = m.run(PROMPTS[0], reads=["resid_post"], keep_grad=True)
    out.logits[0, 5].backward()
    g = [out.cache["resid_post", l].grad for l in range(m.n_layers)]
    assert all(x is not None and x.abs().sum() > 0 for x in g)
    with pytest.raises(InterventionError, match="one forward"):
        m.run(PROMPTS, reads=["resid_post"], keep_grad=True, max_rows=1)


def test_memory_budget_sizes_chunks_without_changing_results():
    m = tiny("llama")
    prompts = [f"Sentence {i} about cats" for i in range(12)]
    whole = m.run(prompts, reads=["resid_post"], positions=[-1], max_rows=12)
    m.memory_budget = 1   # forces one row per chunk
    assert m.rows_for(8) == 1
    calls = []
    orig = m.engine.forward
    m.engine.forward = lambda *a, **k: calls.append(1) or orig(*a, **k)
    small = m.run(prompts, reads=["resid_post"], positions=[-1])
    assert len(calls) == 12
    assert (whole.logits - small.logits).abs().max() < 1e-5
    assert (whole.cache.stack("resid_post") - small.cache.stack("resid_post")).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_query_key_value_edits_agree_across_engines_and_mean_what_they_say(arch):
    """``attn_q`` / ``attn_k`` / ``attn_v``: every engine gives the same logits for the same edits
    (GPT-2: three edits of one fused projection in one layer; llama: GQA, so keys/values have
    fewer heads), and the edits do what the sites say: zero queries give uniform attention over
    the allowed keys, zero values give zero per-head outputs."""
    ms = {e: tiny(arch, e) for e in ("hf", "transformer_lens", "nnsight")}
    a = ms["hf"].adapter
    g = torch.Generator().manual_seed(0)
    b = ms["hf"].tokenize([PROMPTS[0]] * 4)
    plan = InterventionPlan(b)
    plan.set("attn_q", 1, 1, [-1], torch.randn(a.d_head, generator=g), unit=a.n_heads - 1)
    plan.add("attn_k", 1, 1, [0, 2], torch.randn(a.n_kv_heads, a.d_head, generator=g))
    plan.scale("attn_v", 1, 1, [1, -1], 2.5, unit=a.n_kv_heads - 1)
    plan.set("attn_q", 0, 2, list(range(b.lengths[2])), torch.zeros(a.n_heads, a.d_head))
    plan.set("attn_v", 0, 3, list(range(b.lengths[3])), torch.zeros(a.n_kv_heads, a.d_head))
    outs = {e: m.run(plan=plan, reads=["attn_pattern", "attn_z"], layers=[0]) for e, m in ms.items()}
    ref = outs["hf"]
    for e in ("transformer_lens", "nnsight"):
        assert (outs[e].logits - ref.logits).abs().max() < 1e-4, e
    assert all((ref.logits[r] - ref.logits[0]).abs().max() > 1e-4 for r in (1, 2, 3))
    n = b.lengths[2]
    pat = ref.cache["attn_pattern", 0][2]                      # [head, query, key]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert torch.allclose(pat[:, -n:, -n:], uniform.expand_as(pat[:, -n:, -n:]), atol=1e-5)
    assert ref.cache["attn_z", 0][3].abs().max() < 1e-6
    assert ref.cache["attn_z", 0][0].abs().max() > 1e-3
