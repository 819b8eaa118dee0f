"""The code that runs where the model runs: plain torch, shipped by value to an NDIF server.

Design note
-----------
A remote trace (nnsight ``remote=True``) sends the *source* of its body to the NDIF server and
runs it there against the server's copy of the model; the server has torch, transformers,
nnsight and einops, but not interp.  So everything a trace body calls from interp lives in
modules that import nothing but torch and are registered for pickling by value
(:data:`interp.remote.SHIPPED_MODULES`: this module, the canonical weights of
:class:`interp.arch.Weights`, and the method modules that declare their reductions run there); everything else travels as data — token ids, the compiled
edits as index tensors, the points to read, the columns to keep.

The same functions run locally: :meth:`interp.interventions.CompiledPlan.apply` is
:func:`apply_edits`, and :meth:`interp.model.Model.make_hooks` builds its hooks from
:func:`edit_point`, so a local engine and a remote request apply an edit with the same code.

* :func:`apply_edits` — set / add / scale a site at index tensors (values given or copied from
  another row of the same forward), or block attention edges (pre-softmax score → the dtype's
  most negative value);
* :func:`edit_point` — one hook point of a compiled plan: its edits, and the ``resid_mid``
  write, which no engine can make directly (``attn_out += new_mid − old_mid``);
* :func:`gather` — the kept columns of a read;
* :func:`token_prob` / :func:`token_logits` — metrics of a few tokens' logits (a reduction of
  :func:`token_logits` lets the work-skipping LM head compute only those columns);
* :func:`run_chunk` — the body of one remote trace: touch every hook point in execution order,
  apply the edits, keep the reads, reduce the logits, and return only what was asked for.

Edit groups are tuples ``(op, rows, pos, unit, values, src_rows, keys)`` (the fields of
:class:`interp.interventions._Group`): tuples of tensors pickle the same on every Python version,
where a dataclass would travel as byte code.
"""

from __future__ import annotations

import operator

import torch


def apply_edits(site: str, x, groups, n_heads=None):
    """``x`` with every edit group of one hook point applied (``groups``: see the module note).

    Row-sourced values are read before anything at this point is written, so a row can copy
    from a row that is itself edited here.  ``attn_scores``: ``x`` is ``[batch, head or 1,
    query, key]`` (an additive mask or the scores; a per-head block expands a head-less mask).
    """
    if not groups:
        return x
    groups = [_on(g, x.device) for g in groups]
    if site == "attn_scores":
        return block_edges(x, groups, n_heads)
    x = x.clone()
    sourced = [None if src is None else x[(src, pos) + (() if unit is None else (unit,))].clone()
               for _, _, pos, unit, _, src, _ in groups]
    for (op, rows, pos, unit, values, _, _), src in zip(groups, sourced):
        idx = (rows, pos) + (() if unit is None else (unit,))
        val = src if src is not None else values.to(device=x.device, dtype=x.dtype)
        target = x[idx]
        if val.dim() < target.dim():   # one value per entry (e.g. a scalar): broadcast over the rest
            val = val.reshape(*val.shape, *([1] * (target.dim() - val.dim())))
        val = val.expand_as(target)
        if op == "set":
            x[idx] = val
        elif op == "add":
            x = x.index_put(idx, val, accumulate=True)
        elif op == "scale":
            x[idx] = target * val
    return x


def _on(group, device):
    """An edit group with its index tensors on ``device`` (values move at use, with the dtype)."""
    op, rows, pos, unit, values, src, keys = group
    mv = [t if t is None or t.device == device else t.to(device) for t in (rows, pos, unit, src, keys)]
    return op, mv[0], mv[1], mv[2], values, mv[3], mv[4]


def block_edges(scores, groups, n_heads=None):
    """Block attention edges: pre-softmax score of (row, [head], query, key) → most negative.

    ``groups`` already on the scores' device (:func:`apply_edits` moves them).
    """
    need_heads = any(g[3] is not None for g in groups)
    if need_heads and scores.shape[1] == 1:
        if n_heads is None:
            raise ValueError("per-head blocking needs the head axis of the scores")
        scores = scores.expand(scores.shape[0], n_heads, *scores.shape[2:])
    scores = scores.clone()
    low = torch.finfo(scores.dtype).min
    for _, rows, pos, unit, _, _, keys in groups:
        if unit is None:
            scores[rows, :, pos, keys] = low
        else:
            scores[rows, unit, pos, keys] = low
    return scores


def edit_point(site: str, layer, x, apply, mid_layers, state: dict, keep=None):
    """One hook point of a compiled plan: apply its edits, call ``keep(x)`` (the value a read
    sees), and make the ``resid_mid`` writes of its layer.

    ``apply(point, x)`` applies the edits at a point (:meth:`CompiledPlan.apply` locally,
    :func:`apply_edits` on the server).  ``mid_layers``: layers with ``resid_mid`` writes; their
    ``resid_pre`` is remembered in ``state`` and the write becomes ``attn_out += new_mid −
    old_mid`` (exact for untouched entries), because no engine can write the residual sum itself.
    """
    x = apply((site, layer), x)
    if site == "resid_pre" and layer in mid_layers:
        state[layer] = x
    if keep is not None:
        keep(x)
    if site == "attn_out" and layer in mid_layers:
        old = state[layer] + x
        x = x + (apply(("resid_mid", layer), old) - old)
    return x


def hook_points(kept, edit_points) -> tuple[set, set]:
    """``(points, mid_layers)``: every hook point a compiled plan needs — the reads ``kept``, the
    edited points, and for a ``resid_mid`` write its layer's ``resid_pre`` and ``attn_out``
    (:func:`edit_point`) — and the layers with ``resid_mid`` writes."""
    mid = {layer for site, layer in edit_points if site == "resid_mid"}
    points = (set(kept) | {p for p in edit_points if p[0] != "resid_mid"}
              | {(s, layer) for layer in mid for s in ("resid_pre", "attn_out")})
    return points, mid


def gather(site: str, x, cols):
    """The kept columns ``cols [rows, k]`` of a read (``attn_pattern``: query columns); None: all."""
    if cols is None:
        return x
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    cols = cols if cols.device == x.device else cols.to(x.device)
    if site == "attn_pattern":
        return x[rows, :, cols]  # rows k head key
    return x[rows, cols]


def keep_for_grad(x):
    """``x`` marked to keep its gradient: the tensor the model goes on with (so its ``.grad`` is the
    gradient of anything computed from the logits), whole (no gather)."""
    if x.requires_grad:
        x.retain_grad()
    else:
        x.requires_grad_(True)
    return x


def head_out(z, W_O):
    """Per-head outputs ``z_h W_O^h``: ``[..., head, d_head] × [head, d_head, d_model]``."""
    return torch.einsum("...hd,hdm->...hm", z, W_O.to(z.device))


def walk(steps, visit, n_heads: int, d_head: int) -> None:
    """Inside a trace: replace each step's site with ``visit(site, layer, x)``, in order.

    ``steps``: ``[(site, layer, envoy, slot)]`` in the order the model computes them, where
    ``slot`` says how the site sits on its module: ``output``; ``output0`` / ``output1`` of the
    attention module's output tuple (``attn_out`` / ``attn_pattern``: touched once together);
    ``input``; ``heads`` (the output projection's input, as ``[..., head, d_head]``); ``mask`` (the
    ``attention_mask`` keyword); ``post`` (a block or MLP output, a tensor or a tuple); ``proj``
    (a query / key / value projection's output, as ``[..., head, d_head]``); ``qkv0`` / ``qkv1`` /
    ``qkv2`` (the thirds of a fused projection's output: touched once together).
    """
    i = 0
    while i < len(steps):
        site, layer, env, slot = steps[i]
        if slot in ("output0", "output1"):
            out = env.output
            parts = [out[0], out[1]]
            while i < len(steps) and steps[i][2] is env and steps[i][3] in ("output0", "output1"):
                s, l, _, sl = steps[i]
                k = 0 if sl == "output0" else 1
                parts[k] = visit(s, l, parts[k])
                i += 1
            env.output = (parts[0], parts[1]) + tuple(out[2:])
            continue
        if slot in ("qkv0", "qkv1", "qkv2"):
            out = env.output
            d = out.shape[-1] // 3
            parts = [out[..., k * d:(k + 1) * d] for k in range(3)]
            while i < len(steps) and steps[i][2] is env and steps[i][3] in ("qkv0", "qkv1", "qkv2"):
                s, l, _, sl = steps[i]
                k = int(sl[-1])
                x = parts[k]
                parts[k] = visit(s, l, x.reshape(*x.shape[:-1], -1, d_head)).reshape(x.shape)
                i += 1
            env.output = torch.cat(parts, -1)
            continue
        if slot == "output":
            env.output = visit(site, layer, env.output)
        elif slot == "post":
            out = env.output
            if isinstance(out, tuple):
                env.output = (visit(site, layer, out[0]),) + tuple(out[1:])
            else:
                env.output = visit(site, layer, out)
        elif slot == "input":
            env.input = visit(site, layer, env.input)
        elif slot == "proj":
            x = env.output
            env.output = visit(site, layer, x.reshape(*x.shape[:-1], -1, d_head)).reshape(x.shape)
        elif slot == "heads":
            x = env.input
            env.input = visit(site, layer, x.reshape(*x.shape[:-1], n_heads, d_head)).reshape(x.shape)
        elif slot == "mask":
            args, kwargs = env.inputs
            kwargs = dict(kwargs)
            kwargs["attention_mask"] = visit(site, layer, kwargs["attention_mask"])
            env.inputs = (args, kwargs)
        i += 1


def run_chunk(steps, job: dict, w, lm_head, prior=()) -> dict:
    """The body of one remote trace (one chunk of rows), inside ``model.trace(...)``.

    ``steps``: see :func:`walk`.  ``job``: ``edits`` (``{point: groups}``), ``n_heads``,
    ``d_head``, ``mid`` (layers with resid_mid writes), ``keep`` (points to read), ``cols``,
    ``head_out`` (layers whose ``attn_z`` read becomes ``head_out``), ``logits`` (``"last"``,
    ``"all"``, ``"none"`` or a function of the last-token logits), ``last`` (each row's last
    column), ``reduce`` (None or ``fn(w, reads, logits)``), ``grad`` (``keep_grad``: the reads are
    kept whole in the autograd graph and the reduction runs its backward passes on them), ``vedits``
    (value-vector edits, see :func:`value_deltas`), ``chain`` (the reduction takes a fourth argument,
    ``prior``: the earlier reductions of the same request, :meth:`interp.model.Model.run_chain`);
    ``w``: the server's :class:`interp.arch.Weights`.

    Returns ``{"logits", "reads", "reduced"}`` with only what was asked for, on the CPU.
    """
    reads, state, acts = {}, {}, {}
    deltas = value_deltas(w, job["vedits"])

    def apply(point, x):
        return apply_edits(point[0], x, job["edits"].get(point), job["n_heads"])

    def visit(site, layer, x):
        point = (site, layer)

        def keep(v):
            reads[point] = keep_for_grad(v) if job["grad"] else gather(site, v, job["cols"])
        x = edited_weights(site, layer, x, deltas, acts, before=True)
        x = edit_point(site, layer, x, apply, job["mid"], state, keep if point in job["keep"] else None)
        return edited_weights(site, layer, x, deltas, acts, before=False)

    walk(steps, visit, job["n_heads"], job["d_head"])
    for layer in job["head_out"]:
        reads[("head_out", layer)] = head_out(reads[("attn_z", layer)], w.W_O(layer))
        if ("attn_z", layer) not in job["keep"]:
            del reads[("attn_z", layer)]
    mode = job["logits"]
    logits = None
    if mode != "none":
        out = lm_head.output
        if mode == "all":
            logits = out
        else:
            rows = torch.arange(out.shape[0], device=out.device)
            last = job["last"].to(out.device) if out.shape[1] > 1 else torch.zeros_like(rows)
            logits = out[rows, last]
            if callable(mode):
                logits = mode(logits)
    if job["reduce"] is not None:
        args = (w, reads, logits, list(prior)) if job["chain"] else (w, reads, logits)
        return to_cpu({"logits": None, "reads": {}, "reduced": job["reduce"](*args)})
    return to_cpu({"logits": logits, "reads": reads, "reduced": None})


def value_deltas(w, vedits: dict) -> dict:
    """``{layer: (neurons [m], delta [m, d_model])}``: how much each edited value vector changes.

    ``vedits``: ``{layer: (neurons, is_set [m] bool, values [m, d_model])}`` — a value is added to
    the vector, or (``is_set``) replaces it, so the change is ``value − W_out[neuron]``."""
    out = {}
    for layer, (idx, is_set, values) in vedits.items():
        rows = w.W_out(layer)[idx.to(w.W_U.device)]
        vals = values.to(rows.device, rows.dtype)
        out[layer] = (idx, torch.where(is_set.to(rows.device)[:, None], vals - rows, vals))
    return out


def edited_weights(site: str, layer, x, deltas: dict, acts: dict, before: bool):
    """A forward as if value vectors ``W_out[neuron]`` had changed by ``deltas`` (:func:`value_deltas`):
    the MLP output gains ``Σ_neuron activation · delta`` — exactly the edited weight's effect —
    without touching the weights (a remote model's weights are shared and read-only).  Called
    ``before`` a point's plan edits (the MLP output as the edited module writes it) and after
    them (``mlp_post``: the activations the down-projection reads)."""
    if layer not in deltas:
        return x
    if before and site == "mlp_out":
        idx, d = deltas[layer]
        return x + acts[layer][..., idx.to(x.device)] @ d.to(x.device, x.dtype)
    if not before and site == "mlp_post":
        acts[layer] = x
    return x


def generation_edits(tracer, steps, w, vedits: dict, shape, n_steps: int) -> None:
    """Inside ``model.generate``: the value-vector edits (:func:`edited_weights`) at every step;
    ``shape``: ``(n_heads, d_head)``."""
    if not steps:
        return
    deltas = value_deltas(w, vedits)
    acts = {}

    def visit(site, layer, x):
        x = edited_weights(site, layer, x, deltas, acts, before=True)
        return edited_weights(site, layer, x, deltas, acts, before=False)
    for _ in tracer.iter[:n_steps]:
        walk(steps, visit, shape[0], shape[1])


def to_device(x, device):
    """Tensors in a dict of inputs moved to ``device`` (the server's model device)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()}


def compute_on(fn, w, args):
    """``fn(w, *args)`` without autograd, its tensors returned on the CPU (``Model.compute``)."""
    with torch.no_grad():
        return to_cpu(fn(w, *args))


def to_cpu(x):
    """Tensors in nested dicts / lists / tuples detached and moved to the CPU (what travels back).

    A view is copied out of its storage first: serialising a view (``probs[:, target]``) would
    carry the whole storage it looks into."""
    if torch.is_tensor(x):
        x = x.detach()
        if x.untyped_storage().nbytes() > x.numel() * x.element_size():
            x = x.clone()
        return x.cpu()
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x


def take_rows(x, n: int):
    """The first ``n`` rows of every tensor in ``x`` (a tensor, or nested dicts / lists / tuples)."""
    if torch.is_tensor(x):
        return x[:n]
    if isinstance(x, dict):
        return {k: take_rows(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(take_rows(v, n) for v in x)
    return x


def cat_rows(parts: list):
    """Chunks of one structure (see :func:`take_rows`) concatenated along the rows."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: cat_rows([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat_rows([p[i] for p in parts]) for i in range(len(first)))
    return first


def token_prob(logits, token: int):
    """Softmax probability of ``token`` per row, computed in fp32 (bf16 logits included).  (A
    fused softmax beats ``exp(logit − logsumexp)`` on the CPU: 51 vs 65 ms for 325 × 49 152.)"""
    return logits.float().softmax(-1)[:, token]


def token_logits(tokens, fn):
    """A ``logits=`` reduction that reads the logits of ``tokens`` only: ``fn`` gets
    ``[rows, len(tokens)]`` (in the order given).  A logit difference needs two of the
    vocabulary's columns; where the LM head is computed by interp (the work-skipping path) only
    those are, not the whole ``d_model × vocab`` product per row.  Everywhere else it is an
    ordinary function of the last-token logits."""
    try:
        idx = [operator.index(t) for t in tokens]      # ints, numpy / torch integers
    except TypeError:
        idx = []
    if not idx or min(idx) < 0:
        raise ValueError(f"token_logits needs a non-empty list of token ids (ints ≥ 0), not {tokens!r}; "
                         f"get ids with model.tokenizer.encode(...) or model.encode_target(text)")

    def reduce(lg):
        if max(idx) >= lg.shape[-1]:
            raise IndexError(f"token id {max(idx)} is outside the vocabulary of {lg.shape[-1]} logits")
        return fn(lg[:, idx])
    reduce.tokens, reduce.of_tokens = idx, fn
    return reduce
