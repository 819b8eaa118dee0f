"""Property tests of the intervention core: random plans, any chunk size, the work-skipping path
on or off — every row equals the same world run alone, one row at a time.

A seeded generator builds plans over prompts of different lengths (left padding) with every
writable site, every op, units (heads, neurons), attention blocks, row-sourced copies and
derived rows (``plan.derive``).  The reference runs each row by itself with its edits written
out (inherited edits included; a copied value is read from the source row run alone).
"""

from __future__ import annotations

import random

import pytest
import torch

from conftest import tiny
from interp.interventions import InterventionPlan

PROMPTS = ["The cat sat on the mat today", "A dog ran in the park", "Birds fly south in winter every year"]
SITES = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "attn_z",
         "attn_scores", "attn_q", "attn_k", "attn_v"]


def _random_edit(rng: random.Random, m, n_tok: int, copy_ok: bool):
    a = m.adapter
    site = rng.choice(SITES)
    layer = None if site == "embed" else rng.randrange(-a.n_layers, a.n_layers)
    if site == "attn_scores":
        q = rng.randrange(1, n_tok)
        keys = rng.sample(range(q), rng.randint(1, q))          # never every key 0..q (q itself stays)
        head = rng.choice([None, rng.randrange(a.n_heads)])
        return ("block", layer, [q - n_tok if rng.random() < 0.5 else q], keys, head)
    pos = sorted(rng.sample(range(n_tok), rng.randint(1, min(3, n_tok))))
    pos = [p - n_tok if rng.random() < 0.3 else p for p in pos]   # negative positions too
    unit = None
    if site in ("attn_z", "attn_q"):
        unit = rng.randrange(a.n_heads)
        shape = (a.d_head,)
    elif site in ("attn_k", "attn_v"):
        unit = rng.choice([None, rng.randrange(a.n_kv_heads)])
        shape = (a.d_head,) if unit is not None else (a.n_kv_heads, a.d_head)
    elif site == "mlp_post":
        unit = rng.choice([None, rng.randrange(a.d_mlp)])
        shape = (a.d_mlp,) if unit is None else ()
    else:
        shape = (a.d_model,)
    if copy_ok and rng.random() < 0.3:
        return ("copy", site, layer, pos, unit)
    op = rng.choice(["set", "add", "scale"])
    g = torch.Generator().manual_seed(rng.randrange(10**6))
    val = torch.randn(shape, generator=g) * 0.5 if op != "scale" else torch.tensor(rng.uniform(0.0, 2.0))
    return (op, site, layer, pos, val, unit)


def _random_plan(rng: random.Random, m):
    """Base rows (one per prompt), then rows that derive from a row of the same prompt and/or
    copy from a base row of the same prompt."""
    k = rng.randint(1, len(PROMPTS))
    prompts = PROMPTS[:k]
    b = m.tokenize(prompts)
    n_rows = rng.randint(k + 1, k + 6)
    rows_of = list(range(k)) + [rng.randrange(k) for _ in range(n_rows - k)]
    plan = InterventionPlan(b.select(rows_of))
    edits: dict[int, list] = {r: [] for r in range(n_rows)}
    for r in range(n_rows):
        n_tok = b.lengths[rows_of[r]]
        if r >= k and rng.random() < 0.6:   # derive from an earlier row of the same prompt
            cands = [p for p in range(r) if rows_of[p] == rows_of[r]]
            plan.derive(r, rng.choice(cands))
        for _ in range(rng.randint(0 if r < k else 1, 3)):
            e = _random_edit(rng, m, n_tok, copy_ok=r >= k)
            if e[0] == "copy":   # copy from the base row of this prompt, at a point it leaves alone
                _, site, layer, pos, unit = e
                src = rows_of[r]
                if any(x[1] == site and x[2] == layer for x in edits[src] if x[0] != "block"):
                    continue
                plan.set(site, layer, r, pos, source_row=src, unit=unit)
            elif e[0] == "block":
                _, layer, q, keys, head = e
                plan.block(layer, r, q, keys, head=head)
            else:
                op, site, layer, pos, val, unit = e
                getattr(plan, op)(site, layer, r, pos, val, unit=unit)
            edits[r].append(e)
    return plan


def _reference(m, plan: InterventionPlan) -> torch.Tensor:
    """Each row alone: its written-out edits, copies replaced by the source row's value."""
    flat = plan.flat()
    b = plan.batch
    out = []
    for r in range(b.size):
        one = InterventionPlan(b.select([r]))
        for e in (e for e in flat.edits if e.row == r):
            if e.source_row is None:
                one.add_edit(type(e)(e.site, e.layer, 0, e.positions, e.op, e.value, None, e.unit, e.keys))
                continue
            src = InterventionPlan(b.select([e.source_row]))
            src.edits = [type(x)(x.site, x.layer, 0, x.positions, x.op, x.value, None, x.unit, x.keys)
                         for x in flat.edits if x.row == e.source_row]
            site = "attn_z" if e.site == "attn_z" else e.site
            got = m.run(plan=src, reads=[(site, e.layer)], positions=list(e.positions)).cache[site, e.layer
                                                                                          if e.layer is None or e.layer >= 0
                                                                                          else e.layer % m.n_layers]
            val = got[0] if e.unit is None else got[0][:, e.unit]
            one.add_edit(type(e)(e.site, e.layer, 0, e.positions, "set", val, None, e.unit, None))
        out.append(m.run(plan=one).logits[0])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_plans_equal_one_row_at_a_time(arch):
    m = tiny(arch)
    rng = random.Random(1234 + len(arch))
    for trial in range(12):
        plan = _random_plan(rng, m)
        ref = _reference(m, plan)
        for max_rows in sorted({1, 2, rng.randint(1, plan.batch.size), plan.batch.size}):
            for skip in (True, False):
                got = m.run(plan=plan, max_rows=max_rows, skip=skip)
                err = float((got.logits - ref).abs().max())
                assert err < 1e-4, (trial, max_rows, skip, got.extra, err, plan)
