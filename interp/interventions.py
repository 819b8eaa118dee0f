"""Batched interventions: many counterfactual *worlds* in one forward pass.

A sweep (patch every layer × position, restore every state of a causal trace, knock out every
window of layers) is not a loop of forwards.  It is one :class:`InterventionPlan`: a batch whose
row ``r`` is one world, plus a list of :class:`Edit` values, each addressed to a row.  The plan
is *compiled* once into vectorised index tensors per hook point (site, layer), so at run time a
hook applies all the edits of all rows at that point with a single ``index_put``.  This follows
penzai's worlds axis: interventions are values you insert, not callbacks hidden in loops.

An edit either carries its own value (a cached activation from another run, a noise draw, a
constant) or copies the value *from another row of the same forward* (``source_row``), so a
clean row and its corrupted variants can run side by side.  :meth:`InterventionPlan.chunks`
splits a plan to a row budget and keeps, in every chunk, the source rows its edits read from.

Operations: ``set`` (replace), ``add``, ``scale`` (multiply), and ``block`` for attention
edges (pre-softmax score of query → key set to the dtype's most negative value, so the softmax
renormalises over the remaining keys; blocking every key of a query row is refused).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .arch import SITES, check_site
from .errors import InterventionError, LayerIndexError, SiteError
from .tokens import Batch

OPS = ("set", "add", "scale", "block")
WRITABLE = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post",
            "attn_z", "attn_scores")
#: sites whose trailing axis is indexed by ``unit`` (head of attn_z, neuron of mlp_post)
UNIT_SITES = {"attn_z": "head", "mlp_post": "neuron", "attn_scores": "head"}
#: number of axes after (batch, pos) of each writable site
_TRAILING_NDIM = {"embed": 1, "resid_pre": 1, "resid_mid": 1, "resid_post": 1, "attn_out": 1,
                  "mlp_out": 1, "mlp_post": 1, "attn_z": 2}


@dataclass
class Edit:
    """One edit of one row at one (site, layer).

    ``positions`` are prompt-relative (``-1`` = last token).  ``value`` broadcasts to
    ``[len(positions), *unit_shape]`` where unit_shape is the site's trailing shape (``[d_model]``
    for residual sites, ``[d_head]`` for a head of ``attn_z``, ``[]`` for one neuron).
    ``source_row`` instead copies the same (site, layer, positions, unit) from that row.
    For ``block``, ``positions`` are query positions and ``keys`` the blocked key positions.
    """

    site: str
    layer: int | None
    row: int
    positions: Sequence[int]
    op: str = "set"
    value: Tensor | float | None = None
    source_row: int | None = None
    unit: int | None = None
    keys: Sequence[int] | None = None


@dataclass
class _Group:
    op: str
    rows: Tensor
    pos: Tensor
    unit: Tensor | None
    values: Tensor | None
    src_rows: Tensor | None
    keys: Tensor | None = None


class CompiledPlan:
    """Edits grouped per hook point as index tensors; applied by :meth:`apply`."""

    def __init__(self, groups: dict[tuple[str, int | None], list[_Group]], n_heads: int | None = None):
        self.groups = groups
        self.n_heads = n_heads

    @property
    def points(self) -> list[tuple[str, int | None]]:
        return list(self.groups)

    def apply(self, point: tuple[str, int | None], x: Tensor) -> Tensor:
        groups = self.groups.get(point)
        if not groups:
            return x
        site = point[0]
        if site == "attn_scores":
            return _apply_block(x, groups, self.n_heads)
        x = x.clone()
        # read every row-sourced value before anything at this point is written
        sourced = [None if g.src_rows is None else
                   x[(g.src_rows, g.pos) + (() if g.unit is None else (g.unit,))].clone()
                   for g in groups]
        for g, src in zip(groups, sourced):
            idx = (g.rows, g.pos) + (() if g.unit is None else (g.unit,))
            val = src if src is not None else g.values.to(device=x.device, dtype=x.dtype)
            if g.op == "set":
                x[idx] = val.expand_as(x[idx]) if val.dim() < x[idx].dim() else val
            elif g.op == "add":
                x = x.index_put(idx, val.expand_as(x[idx]), accumulate=True)
            elif g.op == "scale":
                x[idx] = x[idx] * val
        return x


def _apply_block(scores: Tensor, groups: list[_Group], n_heads: int | None = None) -> Tensor:
    """``scores``: [batch, head or 1, query, key] additive mask or pre-softmax scores.

    A per-head block on a head-less additive mask (hf / nnsight engines) expands the mask to
    ``n_heads``: the attention adds it to the scores by broadcasting either way.
    """
    need_heads = any(g.unit is not None for g in groups)
    if need_heads and scores.shape[1] == 1:
        if n_heads is None:
            raise InterventionError("per-head blocking needs the head axis of the scores")
        scores = scores.expand(scores.shape[0], n_heads, *scores.shape[2:])
    scores = scores.clone()
    low = torch.finfo(scores.dtype).min
    for g in groups:
        if g.unit is None:
            scores[g.rows, :, g.pos, g.keys] = low
        else:
            scores[g.rows, g.unit, g.pos, g.keys] = low
    return scores


@dataclass
class InterventionPlan:
    """Rows of a batch and the edits each row carries.  Build with the helper methods."""

    batch: Batch
    edits: list[Edit] = field(default_factory=list)

    # -------------------------------------------------------------- building
    def add_edit(self, edit: Edit) -> "InterventionPlan":
        self.edits.append(edit)
        return self

    def set(self, site, layer, row, positions, value=None, *, source_row=None, unit=None):
        return self.add_edit(Edit(site, layer, row, _as_list(positions), "set", value, source_row, unit))

    def add(self, site, layer, row, positions, value, *, unit=None):
        return self.add_edit(Edit(site, layer, row, _as_list(positions), "add", value, None, unit))

    def scale(self, site, layer, row, positions, factor, *, unit=None):
        return self.add_edit(Edit(site, layer, row, _as_list(positions), "scale", factor, None, unit))

    def block(self, layer, row, queries, keys, *, head=None):
        return self.add_edit(Edit("attn_scores", layer, row, _as_list(queries), "block",
                                  unit=head, keys=_as_list(keys)))

    # -------------------------------------------------------------- compiling
    def compile(self, n_layers: int, unit_sizes: dict[str, int] | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None) -> CompiledPlan:
        """Validate every edit and group them into index tensors per hook point.

        ``shapes`` gives each site's trailing shape (e.g. ``{"resid_post": (d_model,)}``) so a
        value of the wrong size is refused here, with the edit's number, not inside torch.
        """
        unit_sizes = unit_sizes or {}
        shapes = shapes or {}
        buckets: dict[tuple, list] = defaultdict(list)
        b = self.batch
        for k, e in enumerate(self.edits):
            check_site(e.site)
            if e.site not in WRITABLE:
                raise SiteError(f"edit {k}: site {e.site!r} is read-only; writable sites: "
                                f"{', '.join(WRITABLE)}")
            if e.op not in OPS:
                raise InterventionError(f"edit {k}: unknown op {e.op!r}; valid: {', '.join(OPS)}")
            if (e.op == "block") != (e.site == "attn_scores"):
                raise InterventionError(f"edit {k}: 'block' is the only op of 'attn_scores' and "
                                        f"applies to no other site")
            has_layer = SITES[e.site][0]
            if has_layer:
                if not isinstance(e.layer, int) or not -n_layers <= e.layer < n_layers:
                    raise LayerIndexError(f"edit {k}: layer {e.layer!r} out of range 0..{n_layers - 1}")
                layer = e.layer % n_layers
            else:
                layer = None
            if not 0 <= e.row < b.size:
                raise InterventionError(f"edit {k}: row {e.row} not in the plan's batch of {b.size}")
            if e.source_row is not None and not 0 <= e.source_row < b.size:
                raise InterventionError(f"edit {k}: source_row {e.source_row} not in the batch")
            if e.unit is not None:
                if e.site not in UNIT_SITES:
                    raise InterventionError(f"edit {k}: unit= applies to {', '.join(UNIT_SITES)} only")
                n = unit_sizes.get(e.site)
                if n is not None and not 0 <= e.unit < n:
                    raise LayerIndexError(f"edit {k}: {UNIT_SITES[e.site]} {e.unit} out of range 0..{n - 1}")
            if not e.positions:
                continue
            pos = [b.abs_pos(e.row, p) for p in e.positions]
            if e.op == "block":
                keys = [b.abs_pos(e.row, p) for p in (e.keys or [])]
                if not keys:
                    continue
                key = ("attn_scores", layer, "block", e.unit is not None, False)
                for q in pos:
                    for kk in keys:
                        buckets[key].append((e.row, q, e.unit, kk))
                continue
            if e.op != "set" and e.source_row is not None:
                raise InterventionError(f"edit {k}: source_row works with op 'set' only")
            if e.source_row is None and e.value is None:
                raise InterventionError(f"edit {k}: give a value or a source_row")
            key = (e.site, layer, e.op, e.unit is not None, e.source_row is not None)
            if e.source_row is not None:
                src_pos = [b.abs_pos(e.source_row, p) for p in e.positions]
                for p, sp in zip(pos, src_pos):
                    buckets[key].append((e.row, p, e.unit, e.source_row, sp))
            else:
                v = torch.as_tensor(e.value)
                trailing = _TRAILING_NDIM[e.site] - (e.unit is not None)
                if v.dim() != trailing + 1:  # one value for every position: broadcast
                    v = v.unsqueeze(0).expand(len(pos), *v.shape)
                elif v.shape[0] != len(pos):
                    raise InterventionError(f"edit {k}: value has {v.shape[0]} rows for "
                                            f"{len(pos)} positions")
                want = shapes.get(e.site)
                if want is not None:
                    want = want[1:] if e.unit is not None else want
                    try:
                        torch.broadcast_shapes(tuple(v.shape[1:]), tuple(want))
                        ok = len(v.shape[1:]) <= len(want)
                    except RuntimeError:
                        ok = False
                    if not ok:
                        raise InterventionError(
                            f"edit {k}: value of shape {tuple(v.shape[1:])} per position does not fit "
                            f"site {e.site!r}{' unit' if e.unit is not None else ''} of shape {tuple(want)}")
                for i, p in enumerate(pos):
                    buckets[key].append((e.row, p, e.unit, v[i]))
        groups: dict[tuple[str, int | None], list[_Group]] = defaultdict(list)
        for (site, layer, op, has_unit, has_src), items in buckets.items():
            rows = torch.tensor([it[0] for it in items])
            unit = torch.tensor([it[2] for it in items]) if has_unit else None
            if op == "block":
                groups[(site, layer)].append(_Group(op, rows, torch.tensor([it[1] for it in items]),
                                                    unit, None, None, torch.tensor([it[3] for it in items])))
            elif has_src:
                # source rows are read at the *source* position: row-sourced copies within one
                # prompt length (same-length prompts) address the same column
                src_pos = torch.tensor([it[4] for it in items])
                pos = torch.tensor([it[1] for it in items])
                if not torch.equal(src_pos, pos):
                    raise InterventionError("source_row copies need rows of equal token length "
                                            "(the source and target positions differ)")
                groups[(site, layer)].append(_Group(op, rows, pos, unit, None,
                                                    torch.tensor([it[3] for it in items])))
            else:
                vals = torch.stack([torch.as_tensor(it[3]) for it in items])
                groups[(site, layer)].append(_Group(op, rows, torch.tensor([it[1] for it in items]),
                                                    unit, vals, None))
        _check_blocks(groups, self.batch)
        return CompiledPlan(dict(groups), unit_sizes.get("attn_scores"))

    # -------------------------------------------------------------- chunking
    def chunks(self, max_rows: int) -> list[tuple[list[int], "InterventionPlan"]]:
        """Split into plans of at most ``max_rows`` own rows (plus the rows they copy from).

        Returns ``(own_rows, plan)`` pairs: ``own_rows`` are the original row indices whose
        outputs the chunk produces, in the order of the chunk plan's first rows.
        """
        if max_rows < 1:
            raise InterventionError(f"max_rows must be ≥ 1, not {max_rows}")
        by_row: dict[int, list[Edit]] = defaultdict(list)
        for e in self.edits:
            by_row[e.row].append(e)
        out = []
        for start in range(0, self.batch.size, max_rows):
            own = list(range(start, min(start + max_rows, self.batch.size)))
            extra = sorted({e.source_row for r in own for e in by_row[r]
                            if e.source_row is not None and e.source_row not in own})
            rows = own + extra
            remap = {r: i for i, r in enumerate(rows)}
            sub = InterventionPlan(self.batch.select(rows))
            for r in own:
                for e in by_row[r]:
                    sub.edits.append(Edit(e.site, e.layer, remap[e.row], e.positions, e.op, e.value,
                                          None if e.source_row is None else remap[e.source_row],
                                          e.unit, e.keys))
            out.append((own, sub))
        return out


def _check_blocks(groups, batch: Batch) -> None:
    """Refuse a block that leaves some query row with no key to attend to."""
    for (site, layer), gs in groups.items():
        if site != "attn_scores":
            continue
        w = batch.width
        blocked = torch.zeros(batch.size, w, w, dtype=torch.bool)
        for g in gs:
            if g.unit is None:
                blocked[g.rows, g.pos, g.keys] = True
        if not blocked.any():
            continue
        causal = torch.ones(w, w, dtype=torch.bool).tril()
        allowed = causal & batch.attention_mask.bool()[:, None, :] & ~blocked
        q_real = batch.attention_mask.bool()
        dead = (~allowed.any(-1)) & q_real & blocked.any(-1)
        if dead.any():
            r, q = dead.nonzero()[0].tolist()
            raise InterventionError(
                f"layer {layer}: the block edits of row {r} remove every key of query column {q}; "
                f"the softmax would have nothing to attend to (keep at least one edge, e.g. "
                f"the token to itself)")


def _as_list(positions) -> list[int]:
    if isinstance(positions, int):
        return [positions]
    if isinstance(positions, range):
        return list(positions)
    if isinstance(positions, Tensor):
        return positions.flatten().tolist()
    return list(positions)
