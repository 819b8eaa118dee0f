"""Work skipping: run a derived row only from its first edit on.

Design note
-----------
A row of an :class:`~interp.interventions.InterventionPlan` declared with
``plan.derive(row, parent)`` is its parent's world plus its own edits.  With causal attention,
such a row equals its parent

* in every layer before the first layer boundary its own edits touch
  (:func:`~interp.interventions.point_boundary`: ``resid_post`` of layer ``l`` is boundary
  ``l + 1``), and
* at every position before the first column its own edits touch, in every layer.

So the row only needs layers ``b …`` at columns ``c …``: its residual at boundary ``b`` and the
keys/values of columns ``< c`` come from the parent.  Over a causal-trace grid this is about a
third of the rows' work, over a knockout sweep (one query column) far less; the numbers are the
same as running every row in full (tested on every supported architecture).

How it runs (engines with the ``skip_work`` capability provide the primitives; the ``hf`` engine
builds them from the model's own modules):

1. **Roots** (rows without a parent, and every row another row copies a value from) run in one
   ordinary forward of the model, with the plan's edits.  It also records, for the roots that
   have children, the residual at every boundary (the raw output of each layer, before the
   plan's ``resid_post`` edits), the keys/values of every layer, the keyword arguments the
   model gave each decoder layer (masks, rotary tables, position ids), and the values that other
   rows copy.
2. **Derived rows**, level by level (children before grandchildren), in chunks of rows that
   start at the same column, sorted by start boundary: at boundary ``k`` the rows starting there
   join the chunk (their parent's residual), and decoder layer ``k`` runs on the rows active so
   far, over columns ``c …`` only, with the parent's keys/values of columns ``< c`` supplied
   through the cache object the attention asks for, and the model's own layer arguments sliced
   to those columns.  Rows that have children record their states and keys/values in turn.
   The narrowest chunks (the last columns: a few token positions per layer call) start at a
   wider chunk's column instead, within :data:`MERGE_WORK` extra work: wider matrix products.
3. The final norm and LM head run on the last column, gathered over chunks into calls of
   :data:`UNEMBED_ROWS` rows; the reduction (``logits=fn``) is applied per call.  A reduction
   of a few tokens' logits (:func:`~interp.shipped.token_logits`) gets only those columns.

The edits of a chunk are the compiled plan re-addressed to it (:meth:`CompiledPlan.localize`):
a row's edits at or after its start, columns shifted; copied values are taken from the roots'
forward.  A ``resid_post`` edit becomes an edit of the next layer's input (the same tensor), so
a row starting at that boundary receives it.

Roots that do not fit one forward run in several (each with the rows it copies from), and their
records are joined.  Not covered (``Model.run`` runs the plan in full instead): reads of
activations, all-position logits, gradients and right padding.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from .arch import BLOCK_CACHE_ARGS, BLOCK_SEQ_ARGS
from .interventions import CompiledPlan, InterventionPlan

__all__ = ["run_derived"]

#: Final residuals of derived rows are gathered across chunks (which are often a few rows each)
#: and sent through the final norm and LM head this many at a time: the head's weight is read
#: once per call, so a few wide calls cost less than many narrow ones.
UNEMBED_ROWS = 256

#: The narrowest chunks of a level are started at a wider chunk's column as long as the extra
#: work stays within this share of the level's work (:func:`_merge_narrow_columns`).  On the
#: default model's residual-patching sweep 10% extra work makes the sweep ~10% faster (wider
#: matrix products); beyond that the extra work costs more than it saves.
MERGE_WORK = 0.1


class _PrefixCache:
    """The object Hugging Face attention calls ``update`` on: prepends the keys/values of the
    positions before the computed ones, and keeps the full result when asked."""

    def __init__(self, k_prefix: Tensor | None, v_prefix: Tensor | None):
        self.k, self.v = k_prefix, v_prefix
        self.full: tuple[Tensor, Tensor] | None = None

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        if self.k is not None:
            key_states = torch.cat([self.k, key_states], 2)
            value_states = torch.cat([self.v, value_states], 2)
        self.full = (key_states, value_states)
        return key_states, value_states


def _take_rows(v: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of a captured layer argument (batch of the roots' forward, or 1)."""
    if v.shape[0] == 1:
        return v.expand(len(idx), *v.shape[1:])
    if bool((idx == idx[0]).all()):
        return v[int(idx[0]):int(idx[0]) + 1].expand(len(idx), *v.shape[1:])
    return v[idx.to(v.device)]


def _slice_args(args: dict, idx: Tensor, col0: int) -> dict:
    """The model's keyword arguments of one decoder layer for rows ``idx`` of the roots' forward
    and the columns ``col0 …``."""
    out = {}
    for name, v in args.items():
        if name in BLOCK_CACHE_ARGS:
            continue
        axis = BLOCK_SEQ_ARGS.get(name)
        if axis is None:
            if isinstance(v, Tensor) or (isinstance(v, (tuple, list)) and any(isinstance(t, Tensor) for t in v)):
                raise _Unsupported(f"decoder-layer argument {name!r} is a tensor interp does not know how to slice")
            out[name] = v
            continue

        def cut(t: Tensor) -> Tensor:
            if t.dim() > 1:
                t = _take_rows(t, idx)
            return t.narrow(axis, col0, t.shape[axis] - col0)
        out[name] = tuple(cut(t) for t in v) if isinstance(v, (tuple, list)) else (None if v is None else cut(v))
    return out


def _rows(args: dict, n: int) -> dict:
    """The first ``n`` rows of sliced layer arguments."""
    def first(t):
        return t[:n] if isinstance(t, Tensor) and t.dim() > 1 else t
    return {k: tuple(first(t) for t in v) if isinstance(v, tuple) else first(v) for k, v in args.items()}


class _Unsupported(Exception):
    """This plan cannot take the skipping path; the caller runs it in full."""


class _States:
    """Residuals and keys/values of the rows that have derived rows, looked up through parents."""

    def __init__(self, parents: dict[int, int], bound: list[int], col: list[int]):
        self.parents, self.bound, self.col = parents, bound, col
        self.root_index: dict[int, int] = {}
        self.root_resid: dict[int, Tensor] = {}      # boundary -> [roots, W, d] (raw)
        self.root_kv: list = []                       # layer -> (K, V) [roots, kv, W, dh]
        self.resid: dict[int, dict[int, Tensor]] = defaultdict(dict)   # row -> boundary -> [W-c, d]
        self.kv: dict[int, dict[int, tuple]] = defaultdict(dict)       # row -> layer -> (K, V) full

    def resid_at(self, row: int, k: int, c: int) -> Tensor:
        """Raw residual of ``row`` at boundary ``k``, columns ``c …``: ``[W - c, d_model]``."""
        if row in self.root_index:
            return self.root_resid[k][self.root_index[row], c:]
        if k <= self.bound[row]:
            return self.resid_at(self.parents[row], k, c)
        own, c0 = self.resid[row][k], self.col[row]
        if c >= c0:
            return own[c - c0:]
        return torch.cat([self.resid_at(self.parents[row], k, c)[:c0 - c], own])

    def kv_at(self, row: int, k: int) -> tuple[Tensor, Tensor]:
        """Keys and values of ``row`` at layer ``k``, every column: each ``[kv_head, W, d_head]``."""
        if row in self.root_index:
            K, V = self.root_kv[k]
            i = self.root_index[row]
            return K[i], V[i]
        if k < self.bound[row]:
            return self.kv_at(self.parents[row], k)
        return self.kv[row][k]


def _merge_args(parts: list, n_layers: int) -> tuple[list, Tensor]:
    """The decoder-layer arguments of the roots that have derived rows, from one or more root
    forwards: ``(args per layer, row of each such root in them)``.  One forward keeps its own
    tensors (no copy); several are gathered and concatenated (shared tensors once)."""
    if not parts:
        return [None] * n_layers, torch.zeros(0, dtype=torch.long)
    if len(parts) == 1:
        args, keep_local = parts[0]
        return args, keep_local.cpu()
    merged, seen = [], {}
    for k in range(n_layers):
        out = {}
        for name, v in parts[0][0][k].items():
            key = (name, tuple(id(p[0][k][name]) for p in parts))
            if key not in seen:
                vals = [p[0][k][name] for p in parts]
                if isinstance(v, Tensor) and v.dim() > 1:
                    seen[key] = torch.cat([_take_rows(x, idx) for x, (_, idx) in zip(vals, parts)])
                elif isinstance(v, tuple) and v and isinstance(v[0], Tensor):
                    seen[key] = tuple(torch.cat([_take_rows(x[j], idx) for x, (_, idx) in zip(vals, parts)])
                                      for j in range(len(v)))
                else:
                    seen[key] = v
            out[name] = seen[key]
        merged.append(out)
    return merged, torch.arange(sum(len(idx) for _, idx in parts))


def run_derived(model, plan: InterventionPlan, reduce: Callable | None = None, *,
                max_rows: int | None = None, progress: bool = False) -> Float[Tensor, "rows ..."] | None:
    """Last-token logits (or ``reduce`` of them) of every row of ``plan``, each derived row
    computed from its first own edit on.  Returns None when the plan cannot take this path (the
    caller then runs it in full)."""
    try:
        return _run(model, plan, reduce or (lambda lg: lg), max_rows, progress)
    except _Unsupported as e:
        import warnings
        warnings.warn(f"work skipping not possible ({e}); running every row in full", stacklevel=3)
        return None


def _run(model, plan: InterventionPlan, reduce: Callable, max_rows, progress):
    a, eng, dev = model.adapter, model.engine, model.device
    L = a.n_layers
    b = plan.batch
    N, W = b.size, b.width
    compiled = model.compile(plan)          # validates the plan, derived rows written out
    bound, col = plan.row_starts(L)
    copies: dict[int, set[int]] = defaultdict(set)     # row -> rows it copies values from
    for groups in compiled.groups.values():
        for g in groups:
            if g.src_rows is not None:
                for r, s in zip(g.rows.tolist(), g.src_rows.tolist()):
                    copies[r].add(s)
    sources = set().union(*copies.values()) if copies else set()
    parents = {r: p for r, p in plan.parents.items() if r not in sources}   # copied-from rows run in full
    roots = [r for r in range(N) if r not in parents]
    has_children = set(parents.values())
    levels: dict[int, list[int]] = defaultdict(list)     # depth below a root -> derived rows
    for r in parents:
        d, q = 0, r
        while q in parents:
            q, d = parents[q], d + 1
        levels[d].append(r)
    col = _merge_narrow_columns(col, bound, levels, W, L)
    st = _States(parents, bound, col)
    ids, mask, pos = b.input_ids.to(dev), b.attention_mask.to(dev), b.position_ids.to(dev)
    results: list = [None] * N

    # ---------------------------------------------------------------- 1. roots, recording states
    keep_roots = [r for r in roots if r in has_children]
    st.root_index = {r: i for i, r in enumerate(keep_roots)}
    src_index = torch.full((N,), -1, dtype=torch.long)
    if sources:
        src_index[torch.tensor(sorted(sources))] = torch.arange(len(sources))
    src_points = {p for p, gs in compiled.groups.items() if any(g.src_rows is not None for g in gs)}
    src_values: dict = {}
    cap = max_rows or model.max_rows or model.rows_for(W)
    resid_parts: dict[int, list] = defaultdict(list)
    kv_parts: list = []
    arg_parts: list = []
    for start in range(0, len(roots), cap):
        own = roots[start:start + cap]
        rows, todo = list(own), [s for r in own for s in copies.get(r, ())]
        while todo:                      # the rows these copy from, with their own copies in turn
            s = todo.pop()
            if s not in rows:
                rows.append(s)
                todo.extend(copies.get(s, ()))
        rows_t = torch.tensor(rows)
        local = torch.full((N,), -1, dtype=torch.long)
        local[rows_t] = torch.arange(len(rows))
        root_plan = compiled.localize(local, 0, torch.zeros(len(rows), dtype=torch.long), L, shift_resid_post=False)
        keep = [r for r in own if r in has_children]
        keep_local = local[torch.tensor(keep, dtype=torch.long)].to(dev) if keep else None
        here = [r for r in rows if r in sources]
        here_local = local[torch.tensor(here, dtype=torch.long)].to(dev) if here else None
        here_index = src_index[torch.tensor(here, dtype=torch.long)].to(dev) if here else None
        taps: dict = {}
        points = ({("resid_post", k) for k in range(L)} if keep else set()) | (src_points if here else set())
        for point in points:
            def tap(x, point=point):
                if keep_local is not None and point[0] == "resid_post":
                    resid_parts[point[1] + 1].append(x[keep_local].detach().clone())
                if here_local is not None and point in src_points:
                    if point not in src_values:
                        src_values[point] = x.new_zeros((len(sources),) + tuple(x.shape[1:]))
                    src_values[point][here_index] = x[here_local].detach()
            taps[point] = tap
        hooks = model.make_hooks(root_plan, len(rows), taps=taps)
        logits, kv, layer_args = eng.forward_capture(ids[rows_t.to(dev)], mask[rows_t.to(dev)], pos[rows_t.to(dev)],
                                                     hooks)
        red = reduce(logits)
        for i, r in enumerate(own):
            results[r] = red[i]
        if keep:
            kv_parts.append([(K[keep_local], V[keep_local]) for K, V in kv])
            arg_parts.append((layer_args, keep_local))
    if keep_roots:
        st.root_resid = {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in resid_parts.items()}
        st.root_kv = [(torch.cat([p[k][0] for p in kv_parts]), torch.cat([p[k][1] for p in kv_parts]))
                      for k in range(L)]
    layer_args, arg_rows = _merge_args(arg_parts, L)

    def root(r):
        while r in parents:
            r = parents[r]
        return r

    def source_values(point, src_rows, cols, units):
        x = src_values[point][src_index[src_rows].to(dev), cols.to(dev)]
        return x if units is None else x[torch.arange(len(units), device=dev), units.to(dev)]

    # ---------------------------------------------------------------- 2. derived rows, by level
    work = []
    for d in sorted(levels):
        by_col = defaultdict(list)
        for r in levels[d]:
            by_col[col[r]].append(r)
        for c in sorted(by_col):
            rs = sorted(by_col[c], key=lambda r: bound[r])
            size = _chunk_rows(model, max_rows, W, c)
            work.extend((rs[i:i + size], c) for i in range(0, len(rs), size))
    it = work
    if progress and len(work) > 1:
        from tqdm.auto import tqdm
        it = tqdm(work, desc="forward (skipping)", unit="chunk")
    pending: list = []          # (rows, final hidden states) waiting for one batched LM head

    tokens = getattr(reduce, "tokens", None)       # a reduction of a few tokens' logits (token_logits)

    def unembed(flush: bool):
        n = sum(len(rs) for rs, _ in pending)
        if not pending or (not flush and n < UNEMBED_ROWS):
            return
        h = torch.cat([h for _, h in pending])
        out = reduce(eng.unembed(h)) if tokens is None else reduce.of_tokens(eng.unembed(h, tokens))
        for i, r in enumerate(r for rs, _ in pending for r in rs):
            results[r] = out[i]
        pending.clear()

    for chunk, c in it:
        h = _run_chunk(model, compiled, st, chunk, c, parents, has_children, layer_args,
                       arg_rows[torch.tensor([st.root_index[root(r)] for r in chunk])], ids, pos, source_values)
        pending.append((chunk, h))
        unembed(flush=False)
    unembed(flush=True)
    return torch.stack(results)


def _merge_narrow_columns(col: list[int], bound: list[int], levels: dict[int, list[int]], W: int, L: int,
                          budget: float | None = None) -> list[int]:
    """Start columns with the narrowest chunks of each level merged into wider ones.

    ``levels`` holds the derived rows of each level (depth below their root).  Rows of one level
    are grouped by the column they start at; the group starting at ``c`` computes ``W − c``
    columns.  The narrowest groups run layer calls of few token positions
    (a group of the last column: one position per row, and only the rows started so far), where
    matrix products run far below the core's speed.  Starting them at the next wider group's
    column instead (the columns in between are their parent's, recomputed: the same numbers)
    turns them into wider calls.  Narrowest first, each merge is taken while the level's extra
    (row, position, layer) work stays within ``budget`` of its work.  Returns the new start
    column of every row (derived rows only change).  ``budget`` defaults to :data:`MERGE_WORK`."""
    budget = MERGE_WORK if budget is None else budget
    col = list(col)
    for rows in levels.values():
        by_col: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            by_col[col[r]].append(r)
        cost = {c: sum(L - bound[r] for r in rs) for c, rs in by_col.items()}   # layers run per column
        allowed = budget * sum((W - c) * n for c, n in cost.items())
        groups = [[c] for c in sorted(by_col)]          # widest first
        extra = 0
        while len(groups) > 1:
            narrow, wider = groups[-1], groups[-2]
            add = sum((narrow[0] - wider[0]) * cost[c] for c in narrow)
            if extra + add > allowed:
                break
            extra += add
            groups.pop()
            groups[-1] = wider + narrow
        for g in groups:
            for c in g[1:]:
                for r in by_col[c]:
                    col[r] = g[0]
    return col


def _chunk_rows(model, max_rows: int | None, width: int, col: int) -> int:
    """Rows per chunk for rows that compute columns ``col …`` of a ``width``-column batch.

    ``max_rows`` (or ``model.max_rows``) bounds the rows of a *full* forward; rows that compute
    ``width − col`` columns hold that share of a full row's activations, so a chunk takes
    ``max_rows · width / (width − col)`` of them — the same number of token positions.  Without
    either, :meth:`Model.rows_for` sizes the chunk for ``width − col`` columns."""
    cap = max_rows or model.max_rows
    if cap is None:
        return model.rows_for(width - col)
    return max(1, cap * width // (width - col))


def _run_chunk(model, compiled: CompiledPlan, st: _States, chunk: list[int], c: int, parents, has_children,
               layer_args, root_idx: Tensor, ids, pos, source_values) -> Tensor:
    a, eng, dev = model.adapter, model.engine, model.device
    L, N = a.n_layers, ids.shape[0]
    R, W = len(chunk), ids.shape[1]
    starts = torch.tensor([st.bound[r] for r in chunk])
    local = torch.full((N,), -1, dtype=torch.long)
    local[torch.tensor(chunk)] = torch.arange(R)
    lp = compiled.localize(local, c, starts, L, source_values=source_values)
    last_point = ("resid_post", L - 1)
    final = lp.groups.pop(last_point, None)
    hooks = model.make_hooks(lp, R)
    distinct = list(dict.fromkeys(parents[r] for r in chunk))
    pidx = torch.tensor([distinct.index(parents[r]) for r in chunk], device=dev)
    sliced: dict[int, dict] = {}
    by_id: dict = {}
    H = torch.empty(R, W - c, a.d_model, device=dev, dtype=model.dtype)
    rows_t = torch.tensor(chunk, device=dev)
    with eng.hooked(hooks):
        n0 = int((starts == 0).sum())
        if n0:
            H[:n0] = eng.embed(ids[rows_t[:n0], c:], pos[rows_t[:n0], c:])
        for k in range(int(starts.min()), L + 1):
            if k > 0:
                new = (starts == k).nonzero().flatten().tolist()
                if new:
                    H[new[0]:new[-1] + 1] = torch.stack([st.resid_at(parents[chunk[i]], k, c) for i in new])
            if k == L:
                break
            na = int((starts <= k).sum())
            if not na:
                continue
            key = id(layer_args[k])
            if key not in by_id:
                by_id[key] = _slice_args(layer_args[k], root_idx, c)
            sliced[k] = by_id[key]
            if c:
                pk = [st.kv_at(p, k) for p in distinct]
                Kp = torch.stack([x[0][:, :c] for x in pk])[pidx[:na]]
                Vp = torch.stack([x[1][:, :c] for x in pk])[pidx[:na]]
                cache = _PrefixCache(Kp, Vp)
            else:
                cache = _PrefixCache(None, None)
            H[:na] = eng.block(k, H[:na], _rows(sliced[k], na), cache)
            for i in range(na):
                r = chunk[i]
                if r in has_children:
                    st.resid[r][k + 1] = H[i].clone()
                    st.kv[r][k] = (cache.full[0][i], cache.full[1][i])
    if final:
        H = CompiledPlan({last_point: final}, lp.n_heads).apply(last_point, H)
    return H[:, -1]
