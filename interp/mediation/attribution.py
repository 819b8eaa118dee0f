"""Attribution patching (AtP): a first-order estimate of every patching cell from one backward pass.

Design note
-----------
AtP (Nanda 2023, "Attribution patching"; Syed et al. 2023; Kramár et al. 2024) estimates the
effect of patching activation ``a`` from the source run into the base run as
``(a_source − a_base) · ∂metric/∂a |_base`` — one forward without gradients for the source
activations, one forward + backward (``model.run(keep_grad=True)``) for the base run, for *all*
sites, layers, positions and units at once.  Direction and metric are the same as
:func:`interp.mediation.activation_patching` (denoise: source = clean, base = corrupt), so the
two grids can be compared cell by cell; :func:`compare_with_patching` gives the Spearman rank
correlation.

Sites and what the dot product runs over: residual / ``attn_out`` / ``mlp_out`` → d_model
(grid [layer, pos]); ``head`` → the head's ``attn_z`` slice (d_head; [layer, pos, head]);
``neuron`` → one ``mlp_post`` unit ([layer, pos, neuron]).  ``resid_mid`` uses the gradient
at ``attn_out`` (``resid_mid = resid_pre + attn_out`` and ``attn_out`` feeds only it), which
is engine-independent.

AtP* (Kramár et al. 2024) — not implemented: its QK fix recomputes each attention softmax
for query/key patches (one extra attention evaluation per key position and layer), and GradDrop
needs one backward per layer.  Both are left as future work; the correlation reported for
plain AtP says where it is good enough (residual / MLP sites) and where it is not (early-layer
attention through saturated softmaxes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .patching import GRID_SITES, UNIT_SITES, PairGridResult, PatchingResult, _check, metric_fn, prepare_pair


@dataclass(kw_only=True)
class AttributionResult(PairGridResult):
    """AtP estimates of the patched-minus-base metric, same layout as :class:`PatchingResult`."""

    stem = "attribution"
    grid_field = "estimates"

    estimates: dict  # site -> [layer][pos] or [layer][pos][unit]


def attribution_patching(model, clean: str, corrupt: str, *, sites: Sequence[str] | str = ("resid_pre",),
                         layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                         direction: str = "denoise", metric: str | Callable = "logit_diff",
                         answer: str | None = None, wrong: str | None = None,
                         heads: Sequence[int] | None = None, neurons: Sequence[int] | None = None,
                         context: str | None = None, template: str | None = None) -> AttributionResult:
    """AtP estimate ``(a_src − a_base)·∇_a metric`` for every cell (Nanda 2023; Kramár et al. 2024).

    Same arguments as :func:`activation_patching`; unit sites are per position.  Returns
    :class:`AttributionResult` with ``estimates[site]`` shaped [layer, pos] or [layer, pos, unit]
    (an estimate of ``PatchingResult.effect(site)``).
    """
    setup = prepare_pair(model, clean, corrupt, answer=answer, wrong=wrong, context=context, template=template)
    sites, layers, positions, heads, neurons = _check(model, sites, layers, positions, setup.n, heads,
                                                      neurons, direction)
    fn, mname = metric_fn(model, metric, setup.answer_id, setup.wrong_id)
    read_sites = set()
    for s in sites:
        if s in GRID_SITES:
            read_sites.add(s)
            if s == "resid_mid":
                read_sites.add("attn_out")
        else:
            read_sites.add(UNIT_SITES[s])
    reads = [(s, l) for s in sorted(read_sites) for l in layers]
    src_text, base_text = ((setup.clean_text, setup.corrupt_text) if direction == "denoise"
                           else (setup.corrupt_text, setup.clean_text))
    src = model.run(src_text, reads=reads, logits="last")
    base = model.run(base_text, reads=reads, logits="last", keep_grad=True, max_rows=1)
    with torch.enable_grad():  # the caller may have switched autograd off globally
        mb = fn(base.logits)
        mb.sum().backward()
    ms = float(fn(src.logits.to(model.device)).detach())
    m_base = float(mb.detach())
    m_clean, m_corrupt = (ms, m_base) if direction == "denoise" else (m_base, ms)
    est = {}
    pos_t = torch.tensor(positions)
    for s in sites:
        rows = []
        for l in layers:
            if s in GRID_SITES:
                a_b = base.cache[s, l]
                g = base.cache["attn_out", l].grad if s == "resid_mid" else a_b.grad
                d = (src.cache[s, l].to(a_b.device) - a_b.detach())
                e = (d * g)[0].sum(-1)[pos_t]  # pos
            elif s == "head":
                a_b = base.cache["attn_z", l]
                d = src.cache["attn_z", l].to(a_b.device) - a_b.detach()
                e = (d * a_b.grad)[0].sum(-1)[pos_t][:, heads]  # pos head
            else:
                a_b = base.cache["mlp_post", l]
                d = src.cache["mlp_post", l].to(a_b.device) - a_b.detach()
                e = (d * a_b.grad)[0][pos_t][:, neurons]  # pos neuron
            rows.append(e.detach().float().cpu())
        est[s] = torch.stack(rows).tolist()
    return AttributionResult(
        clean=setup.clean_text, corrupt=setup.corrupt_text, tokens=setup.tokens, direction=direction, metric=mname,
        answer=setup.answer, wrong=setup.wrong, clean_metric=m_clean, corrupt_metric=m_corrupt, sites=list(sites),
        layers=layers, positions=positions, estimates=est, heads=heads if "head" in sites else [],
        neurons=neurons, settings={"method": "AtP (first order)", "engine": model.engine_name,
                                   "resid_mid_grad": "attn_out"}, model=model.name)


def spearman(x: Float[Tensor, "..."], y: Float[Tensor, "..."]) -> float:
    """Spearman rank correlation of two equally shaped tensors (average ranks for ties; NaNs dropped)."""
    x, y = x.flatten().double(), y.flatten().double()
    ok = ~(x.isnan() | y.isnan())
    x, y = x[ok], y[ok]

    def rank(v):
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=v.dtype)
        # average ties
        uniq, inv = torch.unique(v, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=v.dtype).index_add_(0, inv, r)
        cnt = torch.zeros(len(uniq), dtype=v.dtype).index_add_(0, inv, torch.ones_like(r))
        return (sums / cnt)[inv]

    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.norm() * ry.norm())
    return float((rx @ ry) / den) if den > 0 else float("nan")


def compare_with_patching(atp: AttributionResult, patch: PatchingResult) -> dict[str, float]:
    """Spearman correlation per site between AtP estimates and real patching effects."""
    return {s: spearman(atp.grid(s), patch.effect(s)) for s in atp.sites if s in patch.sites}
