"""Attribution patching: AtP and AtP*, first-order estimates of every patching cell from backward passes.

Design note
-----------
AtP (Nanda 2023, "Attribution patching"; Syed et al. 2023; Kramár et al. 2024) estimates the
effect of patching activation ``a`` from the source run into the base run as
``(a_source − a_base) · ∂metric/∂a |_base`` — one forward without gradients for the source
activations, one forward + backward for the base run, for *all* sites, layers, positions and
units at once.  Direction and metric are the same as
:func:`interp.mediation.activation_patching` (denoise: source = clean, base = corrupt), so the
two grids can be compared cell by cell; :func:`compare_with_patching` gives the Spearman rank
correlation and :func:`cost_to_recall` Kramár's cost of finding the largest true effects.

Sites and what the dot product runs over: residual / ``attn_out`` / ``mlp_out`` → d_model
(grid [layer, pos]); ``head`` → the head's ``attn_z`` slice (d_head; [layer, pos, head]);
``neuron`` → one ``mlp_post`` unit ([layer, pos, neuron]).  ``resid_mid`` uses the gradient
arriving at ``attn_out`` (``resid_mid = resid_pre + attn_out`` and ``attn_out`` feeds only it),
which is engine-independent.

AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour
to components") — ``method=``:

* ``"atp+qk"`` — **the QK fix.**  Through a saturated softmax the gradient of the attention
  pattern with respect to queries and keys is near zero, so AtP misses patches that move
  attention (false negatives).  A patch at (layer ``l``, position ``p``) first reaches the
  queries and keys of attention layer ``l*`` at position ``p`` only (``l* = l`` for ``resid_pre``,
  ``l + 1`` for every other site; none after the last layer).  For that layer the pattern is
  *recomputed* with the patched input (:meth:`interp.arch.ModelAdapter.attention_pattern`, the
  model's own norm, projections and rotary embedding; for ``resid_mid`` / ``attn_out`` / ``head``
  the same layer's MLP is rerun at ``p`` with :meth:`~interp.arch.ModelAdapter.mlp_sublayer`),
  and the first-order path through that pattern is replaced by the exact change, linear from the
  pattern onwards: ``Î* = Î_AtP + ∇_A metric · (A_patched − A − J_A Δ)``, where ``J_A Δ`` is the
  linearised pattern change AtP used (forward-mode AD through the same function).  Cost: one
  evaluation of one attention layer per cell — no model forward.  Paths through later attention
  layers stay linear, as in the paper (the fix is for query/key nodes).
* ``"atp+gd"`` — **GradDrop.**  A node's direct and indirect effects can cancel in the gradient.
  For every layer ``ℓ`` the backward pass is rerun with the gradient into block ``ℓ``'s outputs
  (``attn_out``, ``mlp_out``) set to zero, giving ``Î_ℓ``; the estimate is Kramár's contribution
  ``c(n) = Σ_ℓ |Î_ℓ(n)| / (L − 1)`` — a **magnitude** (``signed=False``), compared with real
  patching by ``|effect|``.  Cells inside the dropped block get ``Î_ℓ = 0`` (their path is cut),
  hence the ``L − 1``.  Cost: ``L`` extra backward passes.
* ``"atp*"`` — both: the QK-fixed estimate under every GradDrop gradient.

Where it runs.  The two runs are one :meth:`interp.model.Model.run_chain`, so the same code runs
locally and on a remote model (NDIF, :mod:`interp.remote`; this module is shipped with the
requests), where the chain is one request:

1. the source run's reduction (:func:`source_values`) keeps the values of the patched points
   (whole positions; only the asked-for heads / neurons) and the source metric — they stay where
   the model runs;
2. the base run (``keep_grad=True``) hands its reads, still in the autograd graph, to
   :func:`atp_estimates`, which runs the backward pass (and GradDrop's ``L`` more, with tensor
   hooks), the **QK fix's pattern evaluations on the model's own weights**
   (:meth:`interp.arch.Weights.attention_pattern`, ``mlp_sublayer``, ``W_O``, ``W_out`` — on a remote
   model the server's copy: no weight is fetched), and every per-cell product.  Only the
   estimates ``[layer, pos(, unit)]`` per site and the two metrics come back; no gradient and no
   activation leaves the model's side.

A remote AtP / AtP* call is two requests: the answer tokens (:func:`prepare_pair`) and the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InterventionError
from ..remote import ships_with_requests
from .patching import GRID_SITES, UNIT_SITES, PairGridResult, PatchingResult, _check, metric_fn, prepare_pair

ships_with_requests(__name__)  # its estimates are computed where the model runs (interp.remote)

#: method name -> (QK fix, GradDrop)
METHODS = {"atp": (False, False), "atp+qk": (True, False), "atp+gd": (False, True), "atp*": (True, True)}
METHOD_TITLES = {"atp": "AtP", "atp+qk": "AtP + QK fix", "atp+gd": "AtP + GradDrop", "atp*": "AtP*"}


@dataclass(kw_only=True)
class AttributionResult(PairGridResult):
    """AtP / AtP* estimates of the patched-minus-base metric, same layout as :class:`PatchingResult`.

    ``signed`` is False for GradDrop methods, whose estimates are magnitudes ``c(n) ≥ 0``.
    """

    stem = "attribution"
    grid_field = "estimates"

    estimates: dict  # site -> [layer][pos] or [layer][pos][unit]
    method: str = "atp"
    signed: bool = True


def _read_points(sites, layers, n_layers, qk: bool, gd: bool) -> list[tuple[str, int]]:
    pts = set()
    for s in sites:
        for l in layers:
            if s in GRID_SITES:
                pts.add((s, l))
                if s == "resid_mid":
                    pts.add(("attn_out", l))
            else:
                pts.add((UNIT_SITES[s], l))
            ls = _next_attention(s, l, n_layers) if qk else None
            if ls is not None:
                pts |= {("attn_pattern", ls), ("resid_pre", ls)}
                if s in ("resid_mid", "attn_out", "head"):
                    pts.add(("resid_mid", l))
    if gd:
        pts |= {(s, l) for s in ("attn_out", "mlp_out") for l in range(n_layers)}
    return sorted(pts, key=lambda p: (p[1], p[0]))


def _next_attention(site: str, layer: int, n_layers: int) -> int | None:
    """The first attention layer whose queries/keys a patch of ``site`` at ``layer`` reaches."""
    ls = layer if site == "resid_pre" else layer + 1
    return ls if ls < n_layers else None


def _gradients(reads: dict, metric_value: Tensor, drop: Sequence[int | None]) -> list[dict]:
    """One gradient dict per entry of ``drop`` (None = plain backward; ℓ = GradDrop of block ℓ).

    ``reads``: the base run's reads, kept in the autograd graph.  Every one gets a hook that records the gradient arriving at it; for a dropped block
    the hooks on its ``attn_out`` / ``mlp_out`` return zeros, so nothing flows into the block.
    ``("resid_mid_total", l)`` holds the gradient arriving at ``attn_out`` before any drop (the
    residual's gradient after attention; an engine's ``resid_mid`` read may be the MLP norm's input,
    which misses the skip path).
    """
    state = {"drop": None, "rec": {}}
    handles = []
    for point, t in reads.items():

        def hook(g, point=point):
            site, layer = point
            if site == "attn_out":
                state["rec"][("resid_mid_total", layer)] = g
            if site in ("attn_out", "mlp_out") and layer == state["drop"]:
                g = torch.zeros_like(g)
                state["rec"][point] = g
                return g
            state["rec"][point] = g
            return None
        handles.append(t.register_hook(hook))
    out = []
    try:
        with torch.enable_grad():  # the caller may have switched autograd off globally
            for k, d in enumerate(drop):
                state["drop"], state["rec"] = d, {}
                torch.autograd.backward(metric_value, retain_graph=k < len(drop) - 1)
                out.append(state["rec"])
    finally:
        for h in handles:
            h.remove()
    return out


def _lift(a, site: str, layer: int, units: Tensor | None, mid_base: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Map changes ``D [cells, n, *unit shape]`` of the site's value to changes of the residual
    entering the next attention layer ``[cells, n, d_model]`` (exact: the same layer's MLP is rerun
    for mid-block sites).  ``a``: the model's :class:`~interp.arch.Weights`; ``units``: the head /
    neuron of every cell."""
    if site in ("resid_pre", "resid_post", "mlp_out"):
        return lambda D: D
    if site == "neuron":
        w = a.W_out(layer)[units]  # cells d
        return lambda D: D[..., None] * w[:, None]

    def through_mlp(Dmid):
        return Dmid + a.mlp_sublayer(layer, mid_base + Dmid) - a.mlp_sublayer(layer, mid_base)
    if site in ("resid_mid", "attn_out"):
        return through_mlp
    W_O = a.W_O(layer)[units]  # cells d_head d_model
    return lambda D: through_mlp(torch.einsum("cnh,chm->cnm", D, W_O))


def patched_patterns(model, site: str, layer: int, positions: list[int], units: list[int] | None,
                     delta: Tensor, base_cache, batch) -> tuple[int, Tensor, Tensor, Tensor] | None:
    """The next attention layer's pattern under every single-cell patch of ``site`` at ``layer``.

    ``delta``: the source-minus-base value of the site at every position, ``[n, d]`` for grid
    sites, ``[n, unit, ...]`` for the listed ``units`` (heads / neurons).  ``base_cache`` must hold
    the base run's ``resid_pre`` of the next attention layer (and ``resid_mid`` of ``layer`` for
    ``resid_mid`` / ``attn_out`` / ``head``).  Returns ``(l*, A [1, head, n, n], A_patched [cells, head,
    n, n], dA [cells, head, n, n])`` — the base pattern, the exact pattern with the cell patched,
    and its first-order change (JVP) — cells position-major, unit-minor; None after the last
    attention layer.  Every cell is one row of one batched evaluation of the layer's pattern.
    """
    return _patterns(model.adapter, site, layer, positions, units, delta, base_cache, batch.position_ids,
                     batch.attention_mask)


def _patterns(a, site, layer, positions, units, delta, base_cache, position_ids, attention_mask):
    """:func:`patched_patterns` on the weights ``a`` (torch only: runs where the model runs)."""
    ls = _next_attention(site, layer, a.n_layers)
    if ls is None:
        return None
    dev = a.W_E.device
    R_b = base_cache["resid_pre", ls][0].detach().to(dev)  # n d
    mid_b = (base_cache["resid_mid", layer][0].detach().to(dev)
             if site in ("resid_mid", "attn_out", "head") else None)
    n = R_b.shape[0]
    nu = 1 if units is None else len(units)
    cells = [(p, k) for p in positions for k in range(nu)]
    unit_shape = tuple(delta.shape[1:]) if units is None else tuple(delta.shape[2:])
    T = torch.zeros((len(cells), n) + unit_shape, dtype=delta.dtype, device=dev)
    for c, (p, k) in enumerate(cells):
        T[c, p] = delta[p] if units is None else delta[p, k]
    cell_units = None if units is None else torch.tensor([units[k] for _, k in cells], device=dev)
    lift = _lift(a, site, layer, cell_units, mid_b)
    pos_ids = position_ids[:1].to(dev)
    mask = attention_mask[:1].to(dev)

    def pattern(D):
        return a.attention_pattern(ls, R_b + lift(D), pos_ids, mask)

    zero = torch.zeros_like(T)
    with torch.no_grad():
        A_b = pattern(zero)  # same batch shape as A_p: identical kernels, so Δ = 0 gives exactly A_b
        A_p = pattern(T)
    _, dA = torch.func.jvp(pattern, (zero,), (T,))
    return ls, A_b[:1], A_p, dA.detach()


def _qk_corrections(a, site, layer, positions, units, delta, base_cache, position_ids, attention_mask):
    """``(l*, C)`` with ``C[cell] = A_patched − A − J_A Δ`` (zero for cells whose value does not move)."""
    out = _patterns(a, site, layer, positions, units, delta, base_cache, position_ids, attention_mask)
    if out is None:
        return None
    ls, A_b, A_p, dA = out
    C = A_p - A_b - dA
    nu = 1 if units is None else len(units)
    moved = torch.tensor([bool((delta[p] if units is None else delta[p, k]).abs().max() > 0)
                          for p in positions for k in range(nu)], device=C.device)
    return ls, C * moved[:, None, None, None]


def source_values(reads: dict, logits: Tensor, metric: Callable, units: dict) -> dict:
    """The source run's part of AtP, where the model runs: the value of every patched point (only
    the ``units`` asked for at ``attn_z`` / ``mlp_post``: ``{point: heads or neurons}``) and the metric."""
    return {"values": {p: v if p not in units else v[:, :, units[p]] for p, v in reads.items()},
            "metric": metric(logits)}


def atp_estimates(w, reads: dict, logits: Tensor, job: dict, source: dict) -> dict:
    """The base run's part of AtP / AtP*, where the model runs (``Model.run(keep_grad=True, reduce=)``).

    ``reads``: the base run's reads, kept in the autograd graph; ``logits``: its last-token logits;
    ``w``: the model's :class:`~interp.arch.Weights` (the QK fix evaluates attention patterns with
    them); ``job``: the metric, sites, layers, positions, units, method switches and the base
    prompt's ``position_ids`` / ``attention_mask``; ``source``: the source run's
    :func:`source_values`.  Runs the backward pass (and GradDrop's ``L`` more), then the estimate
    of every cell; returns ``{"estimates": {site: [1, layer, pos(, unit)]}, "metric": [1],
    "source_metric": [1]}`` — nothing else travels.
    """
    sites, layers, heads, neurons = job["sites"], job["layers"], job["heads"], job["neurons"]
    qk, gd, L = job["qk"], job["gd"], job["n_layers"]
    values = source["values"]
    with torch.enable_grad():
        mb = job["metric"](logits).sum()
    grads = _gradients(reads, mb, [None] + (list(range(L)) if gd else []))
    if gd:
        grads = grads[1:]
    pos_t = torch.tensor(job["positions"])
    est = {}
    for s in sites:
        rows = []
        for l in layers:
            point = (s, l) if s in GRID_SITES else (UNIT_SITES[s], l)
            a_b = reads[point].detach()
            units = None if s in GRID_SITES else (heads if s == "head" else neurons)
            if units is not None:
                a_b = a_b[:, :, units]  # 1 n unit [d_head]
            d = (values[point].to(a_b.device) - a_b)[0]  # n [unit] [d]
            qkc = (_qk_corrections(w, s, l, job["positions"], units, d, reads, job["position_ids"],
                                   job["attention_mask"]) if qk else None)
            per_variant = []
            for g in grads:
                gp = g.get(("resid_mid_total", l) if s == "resid_mid" else point)
                gp = torch.zeros_like(reads[point]) if gp is None else gp
                gp = gp[0]
                if s == "head":
                    e = (d * gp[:, heads]).sum(-1)[pos_t]  # pos unit
                elif s == "neuron":
                    e = (d * gp[:, neurons])[pos_t]  # pos unit
                else:
                    e = (d * gp).sum(-1)[pos_t]  # pos
                if qkc is not None:
                    ls, C = qkc
                    gA = g.get(("attn_pattern", ls))
                    if gA is not None:
                        corr = torch.einsum("chqk,hqk->c", C.to(gA.dtype), gA[0])
                        e = e + corr.reshape(e.shape)
                per_variant.append(e)
            if gd:
                e = torch.stack(per_variant).abs().sum(0) / max(1, L - 1)
            else:
                e = per_variant[0]
            rows.append(e.detach().float())
        est[s] = torch.stack(rows)[None]
    return {"estimates": est, "metric": mb.detach().reshape(1), "source_metric": source["metric"]}


def attribution_patching(model, clean: str, corrupt: str, *, sites: Sequence[str] | str = ("resid_pre",),
                         layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                         direction: str = "denoise", metric: str | Callable = "logit_diff",
                         answer: str | None = None, wrong: str | None = None,
                         heads: Sequence[int] | None = None, neurons: Sequence[int] | None = None,
                         context: str | None = None, template: str | None = None,
                         method: str = "atp") -> AttributionResult:
    """AtP (Nanda 2023) or AtP* (Kramár et al. 2024) estimate of every patching cell.

    Same arguments as :func:`activation_patching`; unit sites are per position.  ``method``:
    ``"atp"`` (first order), ``"atp+qk"`` (QK fix), ``"atp+gd"`` (GradDrop, magnitudes) or
    ``"atp*"`` (both; magnitudes).  Returns :class:`AttributionResult` with ``estimates[site]``
    shaped [layer, pos] or [layer, pos, unit] (an estimate of ``PatchingResult.effect(site)``, or
    of its absolute value when ``signed`` is False).
    """
    if method not in METHODS:
        raise InterventionError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")
    qk, gd = METHODS[method]
    setup = prepare_pair(model, clean, corrupt, answer=answer, wrong=wrong, context=context, template=template)
    sites, layers, positions, heads, neurons = _check(model, sites, layers, positions, setup.n, heads,
                                                      neurons, direction)
    fn, mname = metric_fn(model, metric, setup.answer_id, setup.wrong_id)
    L = model.n_layers
    src_text, base_text = ((setup.clean_text, setup.corrupt_text) if direction == "denoise"
                           else (setup.corrupt_text, setup.clean_text))
    # first the source values of every patched site (only the asked-for heads / neurons) and the metric,
    units = {(UNIT_SITES[s], l): heads if s == "head" else neurons for s in sites if s in UNIT_SITES for l in layers}
    points = [(s, l) if s in GRID_SITES else (UNIT_SITES[s], l) for s in sites for l in layers]
    batch = model.tokenize(base_text)
    job = {"metric": fn, "sites": list(sites), "layers": list(layers), "positions": list(positions),
           "heads": heads, "neurons": neurons, "qk": qk, "gd": gd, "n_layers": L,
           "position_ids": batch.position_ids, "attention_mask": batch.attention_mask}
    # then the base run's forward and backward passes, and every estimate, where the model runs:
    # one request on a remote model, the source values never leave it
    out = model.run_chain([
        dict(prompts=src_text, reads=points, logits="last", max_rows=1,
             reduce=lambda w, reads, lg: source_values(reads, lg, fn, units)),
        dict(prompts=base_text, reads=_read_points(sites, layers, L, qk, gd), logits="last", keep_grad=True,
             max_rows=1, reduce=lambda w, reads, lg, prior: atp_estimates(w, reads, lg, job, prior[0]))])
    ms, m_base = float(out["source_metric"][0]), float(out["metric"][0])
    m_clean, m_corrupt = (ms, m_base) if direction == "denoise" else (m_base, ms)
    est = {s: out["estimates"][s][0].tolist() for s in sites}
    return AttributionResult(
        clean=setup.clean_text, corrupt=setup.corrupt_text, tokens=setup.tokens, direction=direction, metric=mname,
        answer=setup.answer, wrong=setup.wrong, clean_metric=m_clean, corrupt_metric=m_corrupt, sites=list(sites),
        layers=layers, positions=positions, estimates=est, heads=heads if "head" in sites else [],
        neurons=neurons, model=model.name, method=method, signed=not gd,
        settings={"method": METHOD_TITLES[method], "engine": model.engine_name, "resid_mid_grad": "attn_out",
                  "qk_fix": qk, "grad_drop": gd,
                  **({"grad_drop_norm": "sum over L dropped layers of |I_l| / (L - 1)"} if gd else {}),
                  **({"qk_layer": "resid_pre: same layer; other sites: next layer"} if qk else {})})


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


def compare_with_patching(atp: AttributionResult, patch: PatchingResult, *, magnitude: bool | None = None
                          ) -> dict[str, float]:
    """Spearman correlation per site between attribution estimates and real patching effects.

    ``magnitude`` (default: True for unsigned estimates, i.e. GradDrop) ranks ``|estimate|``
    against ``|effect|`` — Kramár et al.'s target, the size of a node's effect.
    """
    mag = (not atp.signed) if magnitude is None else magnitude
    f = (lambda t: t.abs()) if mag else (lambda t: t)
    return {s: spearman(f(atp.grid(s)), f(patch.effect(s))) for s in atp.sites if s in patch.sites}


def cost_to_recall(estimate: Tensor, effect: Tensor, k_max: int | None = None) -> Float[Tensor, "k"]:
    """Kramár et al.'s verification cost: real patches needed to find the top-k true effects.

    Cells are verified (really patched) in order of decreasing ``|estimate|``; entry ``k − 1`` is
    how many cells must be verified before all of the ``k`` cells with the largest ``|effect|``
    are among them.  An oracle gives ``k``; NaN cells (not run) are left out.
    """
    e, t = estimate.flatten().double(), effect.flatten().double()
    ok = ~(e.isnan() | t.isnan())
    e, t = e[ok].abs(), t[ok].abs()
    rank = torch.empty(len(e), dtype=torch.long)
    rank[e.argsort(descending=True, stable=True)] = torch.arange(len(e))
    top = t.argsort(descending=True, stable=True)[: (k_max or len(t))]
    return (rank[top].cummax(0).values + 1).double()
