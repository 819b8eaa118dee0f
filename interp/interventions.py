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
splits a plan to a row budget and keeps, in every chunk, the source rows its edits read from
(each with its own edits, so the copied value is the one the whole plan would copy).

**Derived rows.**  ``plan.derive(row, parent)`` declares that ``row`` is ``parent``'s world plus
the row's own edits (the row inherits every edit of its ancestors).  Nothing else changes for an
engine that runs every row in full (:meth:`InterventionPlan.flat` spells the inherited edits
out).  An engine with the work-skipping capability (:mod:`interp.skipping`) uses it: a derived
row equals its parent before its first own edit — in every layer before that edit's layer and
at every position before its first edited position — so it starts there from the parent's
cached states.  :func:`row_starts` gives each row's ``(boundary, column)`` and
:meth:`CompiledPlan.localize` re-addresses a compiled plan to a chunk of such partial rows.

Operations: ``set`` (replace), ``add``, ``scale`` (multiply), and ``block`` for attention
edges (pre-softmax score of query → key set to the dtype's most negative value, so the softmax
renormalises over the remaining keys; blocking every key of a query row is refused).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from dataclasses import replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from .arch import SITES, UNIT_AXES, check_site
from .errors import InterventionError, LayerIndexError, SiteError
from .shipped import apply_edits
from .tokens import Batch

OPS = ("set", "add", "scale", "block")
WRITABLE = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post",
            "attn_q", "attn_k", "attn_v", "attn_z", "attn_scores")
#: number of axes after (batch, pos) of each writable site
_TRAILING_NDIM = {"embed": 1, "resid_pre": 1, "resid_mid": 1, "resid_post": 1, "attn_out": 1,
                  "mlp_out": 1, "mlp_post": 1, "attn_q": 2, "attn_k": 2, "attn_v": 2, "attn_z": 2}


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
    _moved: dict = field(default_factory=dict, repr=False, compare=False)

    def on(self, device) -> "_Group":
        """This group with its index tensors on ``device`` (copied once per device)."""
        if self.rows.device == device:
            return self
        if device not in self._moved:
            mv = lambda t: None if t is None else t.to(device)  # noqa: E731
            self._moved[device] = _Group(self.op, mv(self.rows), mv(self.pos), mv(self.unit), self.values,
                                         mv(self.src_rows), mv(self.keys))
        return self._moved[device]

    def astuple(self) -> tuple:
        """``(op, rows, pos, unit, values, src_rows, keys)``: the form :mod:`interp.shipped` takes."""
        return (self.op, self.rows, self.pos, self.unit, self.values, self.src_rows, self.keys)


class CompiledPlan:
    """Edits grouped per hook point as index tensors; applied by :meth:`apply`."""

    def __init__(self, groups: dict[tuple[str, int | None], list[_Group]], n_heads: int | None = None):
        self.groups = groups
        self.n_heads = n_heads

    @property
    def points(self) -> list[tuple[str, int | None]]:
        return list(self.groups)

    def localize(self, local: Tensor, col0: int, starts: Tensor, n_layers: int, *,
                 source_values: Callable | None = None, shift_resid_post: bool = True) -> "CompiledPlan":
        """This plan re-addressed to a chunk of rows that are computed only in part.

        The work-skipping path (:mod:`interp.skipping`) runs a chunk of derived rows from layer
        boundary ``starts[i]`` on, over columns ``col0 …`` only.  ``local[g]`` is the chunk-local
        index of global row ``g`` (−1: not in this chunk).  Kept: a row's edits at columns
        ``≥ col0`` at a boundary ``≥`` its start (see :func:`point_boundary`); the others are
        already contained in the states the row starts from.  Positions shift by ``−col0``; the
        key columns of blocks stay absolute (the keys span the whole prompt).

        Row-sourced values: ``source_values(point, src_rows, columns, units)`` returns them
        (the source rows ran in an earlier forward), or, when it is None, the source rows are
        remapped to their local index (they run in this chunk).  With ``shift_resid_post`` an
        edit of ``resid_post`` of a layer below the last becomes an edit of the next layer's
        ``resid_pre`` (the same tensor in every supported family), placed ahead of that layer's
        own ``resid_pre`` edits, so a row that starts at that boundary receives it.
        """
        shifted: dict = defaultdict(list)
        normal: dict = defaultdict(list)
        for (site, layer), groups in self.groups.items():
            bound = point_boundary(site, layer)
            to_next = shift_resid_post and site == "resid_post" and layer < n_layers - 1
            target, bucket = (("resid_pre", layer + 1), shifted) if to_next else ((site, layer), normal)
            for g in groups:
                loc = local[g.rows]
                keep = (loc >= 0) & (g.pos >= col0)
                keep &= starts[loc.clamp(min=0)] <= bound
                if not bool(keep.any()):
                    continue
                i = keep.nonzero().flatten()
                unit = None if g.unit is None else g.unit[i]
                values = None if g.values is None else g.values[i]
                src = None
                if g.src_rows is not None:
                    if source_values is not None:
                        values = source_values((site, layer), g.src_rows[i], g.pos[i], unit)
                    else:
                        src = local[g.src_rows[i]]
                        if bool((src < 0).any()):
                            raise InterventionError("internal: a chunk lacks a row its edits copy from")
                bucket[target].append(_Group(g.op, loc[i], g.pos[i] - col0, unit, values, src,
                                             None if g.keys is None else g.keys[i]))
        groups = {p: shifted.get(p, []) + normal.get(p, []) for p in {**shifted, **normal}}
        return CompiledPlan(groups, self.n_heads)

    def apply(self, point: tuple[str, int | None], x: Tensor) -> Tensor:
        """``x`` with this plan's edits at ``point`` applied (:func:`interp.shipped.apply_edits`)."""
        groups = self.groups.get(point)
        if not groups:
            return x
        return apply_edits(point[0], x, [g.on(x.device).astuple() for g in groups], self.n_heads)


def point_boundary(site: str, layer: int | None) -> int:
    """The first layer boundary whose residual an edit at ``(site, layer)`` can change.

    Boundary ``k`` is the residual stream entering layer ``k`` (``n_layers``: the final one).
    ``embed`` changes boundary 0, ``resid_post`` of layer ``l`` boundary ``l + 1``, and every
    other site of layer ``l`` (its input, attention, MLP) is computed after boundary ``l``.
    A row whose edits all lie at or after boundary ``k`` equals its parent before ``k``.
    """
    if site == "embed":
        return 0
    if site == "resid_post":
        return layer + 1
    return layer


@dataclass
class InterventionPlan:
    """Rows of a batch and the edits each row carries.  Build with the helper methods."""

    batch: Batch
    edits: list[Edit] = field(default_factory=list)
    #: derived rows: ``row -> parent``; the row inherits every edit of its ancestors
    parents: dict[int, int] = field(default_factory=dict)

    # -------------------------------------------------------------- building
    def add_edit(self, edit: Edit) -> "InterventionPlan":
        self.edits.append(edit)
        return self

    def derive(self, row: int, parent: int) -> "InterventionPlan":
        """Declare ``row`` = ``parent``'s world plus ``row``'s own edits (same tokens).

        The row inherits all of its ancestors' edits.  Engines that can skip work start the
        row at its first own edit from the parent's states (see the module docstring).
        """
        self.parents[int(row)] = int(parent)
        return self

    # -------------------------------------------------------------- derived rows
    def _by_row(self) -> dict[int, list[Edit]]:
        by_row: dict[int, list[Edit]] = defaultdict(list)
        for e in self.edits:
            by_row[e.row].append(e)
        return by_row

    def _check_parents(self) -> None:
        b = self.batch
        for row, parent in self.parents.items():
            for what, r in (("row", row), ("parent", parent)):
                if not 0 <= r < b.size:
                    raise InterventionError(f"derive: {what} {r} not in the plan's batch of {b.size}")
            if row == parent:
                raise InterventionError(f"derive: row {row} cannot be its own parent")
            if not (torch.equal(b.input_ids[row], b.input_ids[parent])
                    and torch.equal(b.attention_mask[row], b.attention_mask[parent])):
                raise InterventionError(
                    f"derive: row {row} and its parent {parent} hold different prompts; a derived "
                    f"row is its parent's prompt plus edits (use the same prompt)")
        for row in self.parents:
            seen = {row}
            r = row
            while r in self.parents:
                r = self.parents[r]
                if r in seen:
                    raise InterventionError(f"derive: rows {sorted(seen)} form a cycle of parents")
                seen.add(r)

    def ancestors(self, row: int) -> list[int]:
        """The row's ancestors, root first (empty for a row that derives from nothing)."""
        chain = []
        while row in self.parents:
            row = self.parents[row]
            chain.append(row)
        return chain[::-1]

    def flat(self) -> "InterventionPlan":
        """The same worlds with every inherited edit written out on its row (no parents)."""
        if not self.parents:
            return self
        self._check_parents()
        by_row = self._by_row()
        edits: list[Edit] = []
        for r in range(self.batch.size):
            for a in self.ancestors(r):
                edits.extend(replace(e, row=r) for e in by_row.get(a, ()))
            edits.extend(by_row.get(r, ()))
        return InterventionPlan(self.batch, edits)

    def row_starts(self, n_layers: int) -> tuple[list[int], list[int]]:
        """Per row, the first boundary (:func:`point_boundary`) and the first column (absolute,
        in the padded batch) that any of its **own** edits touches.

        A row without own edits starts at ``(n_layers, width - 1)``: it only needs its parent's
        final residual at the last column.
        """
        b = self.batch
        bound = [n_layers] * b.size
        col = [b.width - 1] * b.size
        first = [True] * b.size
        for e in self.edits:
            pos = e.positions
            if not pos or (e.op == "block" and not e.keys):
                continue
            layer = None if e.layer is None else e.layer % n_layers
            c = min(b.abs_pos(e.row, p) for p in pos)
            k = point_boundary(e.site, layer)
            if first[e.row]:
                bound[e.row], col[e.row], first[e.row] = k, c, False
            else:
                bound[e.row], col[e.row] = min(bound[e.row], k), min(col[e.row], c)
        return bound, col

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
        if self.parents:
            return self.flat().compile(n_layers, unit_sizes, shapes)
        unit_sizes = unit_sizes or {}
        shapes = shapes or {}
        buckets: dict[tuple, list] = defaultdict(list)
        # the k-th edit of a row at a point goes to a group of k-th edits: a row's edits at one
        # point apply in the order they were added (other rows' edits touch other rows)
        ordinal: dict[tuple, int] = defaultdict(int)
        fits: dict[tuple, bool] = {}       # (value shape, site shape) -> broadcasts (checked once)
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
                if e.site not in UNIT_AXES:
                    raise InterventionError(f"edit {k}: unit= applies to {', '.join(UNIT_AXES)} only")
                n = unit_sizes.get(e.site)
                if n is not None and not 0 <= e.unit < n:
                    raise LayerIndexError(f"edit {k}: {UNIT_AXES[e.site]} {e.unit} out of range 0..{n - 1}")
            if not e.positions:
                continue
            pos = [b.abs_pos(e.row, p) for p in e.positions]
            if e.op == "block":
                keys = [b.abs_pos(e.row, p) for p in (e.keys or [])]
                if not keys:
                    continue
                key = ("attn_scores", layer, "block", e.unit is not None, False, 0)   # blocks commute
                for q in pos:
                    for kk in keys:
                        buckets[key].append((e.row, q, e.unit, kk))
                continue
            if e.op != "set" and e.source_row is not None:
                raise InterventionError(f"edit {k}: source_row works with op 'set' only")
            if e.source_row is None and e.value is None:
                raise InterventionError(f"edit {k}: give a value or a source_row")
            key = (e.site, layer, e.op, e.unit is not None, e.source_row is not None, ordinal[(e.row, e.site, layer)])
            ordinal[(e.row, e.site, layer)] += 1
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
                    want = tuple(want[1:] if e.unit is not None else want)
                    have = tuple(v.shape[1:])
                    ok = fits.get((have, want))
                    if ok is None:
                        try:
                            torch.broadcast_shapes(have, want)
                            ok = len(have) <= len(want)
                        except RuntimeError:
                            ok = False
                        fits[(have, want)] = ok
                    if not ok:
                        raise InterventionError(
                            f"edit {k}: value of shape {tuple(v.shape[1:])} per position does not fit "
                            f"site {e.site!r}{' unit' if e.unit is not None else ''} of shape {tuple(want)}")
                for i, p in enumerate(pos):
                    buckets[key].append((e.row, p, e.unit, v[i]))
        groups: dict[tuple[str, int | None], list[_Group]] = defaultdict(list)
        for (site, layer, op, has_unit, has_src, _), items in sorted(buckets.items(), key=lambda kv: kv[0][-1]):
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
        outputs the chunk produces, in the order of the chunk plan's first rows.  A row that a
        chunk only copies from comes with its own edits (and, in turn, the rows those copy
        from), so every copied value is the one the whole plan would copy.  Derived rows are
        written out first (:meth:`flat`).
        """
        if max_rows < 1:
            raise InterventionError(f"max_rows must be ≥ 1, not {max_rows}")
        plan = self.flat()
        by_row = plan._by_row()
        out = []
        for start in range(0, plan.batch.size, max_rows):
            own = list(range(start, min(start + max_rows, plan.batch.size)))
            seen = set(own)
            todo = [e.source_row for r in own for e in by_row.get(r, ()) if e.source_row is not None]
            extra = []
            while todo:
                src = todo.pop()
                if src in seen:
                    continue
                seen.add(src)
                extra.append(src)
                todo.extend(e.source_row for e in by_row.get(src, ()) if e.source_row is not None)
            rows = own + sorted(extra)
            remap = {r: i for i, r in enumerate(rows)}
            sub = InterventionPlan(plan.batch.select(rows))
            for r in rows:
                for e in by_row.get(r, ()):
                    sub.edits.append(replace(e, row=remap[r], source_row=None if e.source_row is None
                                             else remap[e.source_row]))
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
