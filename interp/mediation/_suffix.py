"""Residual patching past the batched-forward floor: compute only what a patch can change.

Design note
-----------
A patch of the residual stream at (layer ``l``, position ``p``) leaves (1) every state before
layer ``l`` and (2) every position ``< p`` in every layer exactly as in the unpatched base run
(causal attention).  So a patched row only needs layers ``l..L-1`` at positions ``p..n-1``,
attending to the base run's cached keys/values for positions ``< p``.  Over a full
layers × positions grid that is about a quarter of the work of a plain batched forward (which
is already the floor of "one row per cell").

This is a small functional re-implementation of a Llama decoder layer on the model's own
modules (norms, projections, rotary embedding, MLP), used only for residual-stream patching on
the ``hf`` engine; it is checked against the plan path (``fast=False``) to 1e-4 in
``tests/test_mediation_patching.py``.  Rows are grouped by patched position; inside a group
rows are sorted by start layer so the rows active at layer ``k`` are a prefix of the chunk.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def suffix_supported(model) -> bool:
    a = model.adapter
    if model.engine_name != "hf" or a.family != "llama" or a.model_type != "llama":
        return False
    attn = a.attn[0]
    cfg = model.hf.config
    return (all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and getattr(cfg, "sliding_window", None) is None and hasattr(model.hf.model, "rotary_emb"))


def _rows_for(model, n: int) -> int:
    if hasattr(model, "rows_for"):
        return model.rows_for(n)
    return 64


class _Runner:
    def __init__(self, model, n: int):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.m = model
        self.a = model.adapter
        self.rot = apply_rotary_pos_emb
        dev = model.device
        pos = torch.arange(n, device=dev)[None]
        dummy = torch.zeros(1, n, self.a.d_model, device=dev, dtype=model.dtype)
        self.cos, self.sin = model.hf.model.rotary_emb(dummy, pos)
        self.n = n

    def layer(self, k: int, x: Tensor, p: int, k_prefix: Tensor | None, v_prefix: Tensor | None,
              keep_kv: bool = False, fix: dict | None = None, keep_out: bool = False):
        """Layer ``k`` on ``x`` = positions ``p..n-1`` [R, m, d], given keys/values of positions < p."""
        a = self.a
        attn = a.attn[k]
        R, m, _ = x.shape
        H, KV, dh = a.n_heads, a.n_kv_heads, a.d_head
        h = a.ln1[k](x)
        q = attn.q_proj(h).view(R, m, H, dh).transpose(1, 2)
        kk = attn.k_proj(h).view(R, m, KV, dh).transpose(1, 2)
        vv = attn.v_proj(h).view(R, m, KV, dh).transpose(1, 2)
        q, kk = self.rot(q, kk, self.cos[:, p:], self.sin[:, p:])
        kv = (kk, vv) if keep_kv else None
        if p > 0:
            kk = torch.cat([k_prefix.expand(R, -1, -1, -1), kk], 2)
            vv = torch.cat([v_prefix.expand(R, -1, -1, -1), vv], 2)
        g = H // KV
        if g > 1:
            kk = kk.repeat_interleave(g, dim=1)
            vv = vv.repeat_interleave(g, dim=1)
        scale = getattr(attn, "scaling", dh ** -0.5)
        s = torch.matmul(q, kk.transpose(2, 3)) * scale  # R H m n
        qpos = torch.arange(p, self.n, device=x.device)[:, None]
        kpos = torch.arange(self.n, device=x.device)[None]
        s = s.masked_fill(kpos > qpos, torch.finfo(s.dtype).min)
        w = s.float().softmax(-1).to(q.dtype)
        z = torch.matmul(w, vv).transpose(1, 2).reshape(R, m, H * dh)
        ao = attn.o_proj(z)
        if fix and "attn" in fix:  # restore the clean attention output of some rows at position p
            rows, val = fix["attn"]
            ao[rows, 0] = val
        x = x + ao
        mo = a.mlp[k](a.ln2[k](x))
        if fix and "mlp" in fix:
            rows, val = fix["mlp"]
            mo[rows, 0] = val
        x = x + mo
        if keep_out:
            return x, kv, (ao, mo)
        return x, kv


@torch.no_grad()
def patch_residual_rows(model, pair, base_row: int, src_row: int,
                        cells: Sequence[tuple[str, int, int]], fn: Callable, *, max_rows: int | None = None
                        ) -> tuple[float, float, list[float]]:
    """Metric of every residual patch ``(site, layer, pos)`` (site resid_pre or resid_post).

    ``pair``: a :class:`~interp.tokens.Batch` of two prompts of equal length (clean, corrupt);
    the base row's state gets the source row's value at (layer, pos).  Returns
    ``(metric clean, metric corrupt, [metric per cell])``.
    """
    a = model.adapter
    L = a.n_layers
    n = pair.lengths[0]
    dev = model.device
    R = _Runner(model, n)
    ids = pair.input_ids.to(dev)
    x = a.embed_module(ids)
    pre, Ks, Vs = [x], [], []
    for k in range(L):
        x, (kk, vv) = R.layer(k, x, 0, None, None, keep_kv=True)
        pre.append(x)
        Ks.append(kk)
        Vs.append(vv)
    base_lg = a.unembed(x[:, -1])
    m = fn(base_lg).float().cpu()
    m_clean, m_corrupt = float(m[0]), float(m[1])
    # cell -> (start layer, position); resid_post[l] == resid_pre[l+1]
    starts = [(l if site == "resid_pre" else l + 1, p) for site, l, p in cells]
    out = [0.0] * len(cells)
    rows = max_rows or model.max_rows or _rows_for(model, n)
    by_pos: dict[int, list[int]] = {}
    for i, (_, p) in enumerate(starts):
        by_pos.setdefault(p, []).append(i)
    b, s = base_row, src_row
    for p, idx in by_pos.items():
        idx = sorted(idx, key=lambda i: starts[i][0])
        for c0 in range(0, len(idx), rows):
            chunk = idx[c0:c0 + rows]
            st = torch.tensor([starts[i][0] for i in chunk])
            Hs = torch.empty(len(chunk), n - p, a.d_model, device=dev, dtype=model.dtype)
            k0 = int(st[0])
            for k in range(k0, L + 1):
                new = ((st == k).nonzero().flatten()).tolist()
                if new:
                    lo, hi = new[0], new[-1] + 1
                    Hs[lo:hi] = pre[k][b, p:]
                    Hs[lo:hi, 0] = pre[k][s, p]
                if k == L:
                    break
                na = int((st <= k).sum())
                if na:
                    Hs[:na], _ = R.layer(k, Hs[:na], p, Ks[k][b:b + 1, :, :p], Vs[k][b:b + 1, :, :p])
            v = fn(a.unembed(Hs[:, -1])).float().cpu().tolist()
            for i, val in zip(chunk, v):
                out[i] = val
    return m_clean, m_corrupt, out


@torch.no_grad()
def trace_rows(model, setup, cells: Sequence[tuple[str, int, int, Sequence[int]]], *,
               max_rows: int | None = None) -> tuple[float, float, Tensor]:
    """Causal-trace restorations computed from the restored layer / token onwards only.

    ``cells``: ``(kind, layer, token, window_layers)``; kind ``resid`` restores ``resid_post``
    of ``layer``, ``mlp`` / ``attn`` restore the module output at ``token`` in every layer of
    ``window_layers``.  The corrupted runs (one per noise sample, the same draws as the plan
    path) are computed once, in full, and cached (residuals, keys, values); each restoration row
    then starts at its first restored layer from the cached corrupted residual and computes only
    positions ≥ ``token``.  Returns ``(p_clean, p_corrupt, p per cell)`` (mean over samples).
    """
    a = model.adapter
    L = a.n_layers
    dev = model.device
    b = model.tokenize([setup.text])
    n = b.lengths[0]
    R = _Runner(model, n)
    tid = setup.target_id
    prob = lambda h: a.unembed(h).float().softmax(-1)[:, tid]  # noqa: E731
    ids = b.input_ids.to(dev)
    S = setup.noise.shape[0]
    emb = a.embed_module(ids)
    cpos = torch.tensor(setup.corrupt_positions, device=dev)
    xc = emb.expand(S, -1, -1).clone()
    xc[:, cpos] = xc[:, cpos] + setup.noise.to(dev, emb.dtype)
    x = torch.cat([emb, xc])  # row 0 clean, rows 1..S corrupted
    pre, Ks, Vs, aos, mos = [x], [], [], [], []
    for k in range(L):
        x, (kk, vv), (ao, mo) = R.layer(k, x, 0, None, None, keep_kv=True, keep_out=True)
        pre.append(x)
        Ks.append(kk)
        Vs.append(vv)
        aos.append(ao[0])
        mos.append(mo[0])
    pl = prob(x[:, -1]).double().cpu()
    p_clean, p_corrupt = float(pl[0]), float(pl[1:].mean())
    # rows: (cell index, sample, start layer, token)
    rows_per_t: dict[int, list[tuple[int, int, int]]] = {}
    starts = []
    for ci, (kind, l, t, lays) in enumerate(cells):
        st = l + 1 if kind == "resid" else min(lays)
        starts.append(st)
        rows_per_t.setdefault(t, []).extend((ci, s, st) for s in range(S))
    acc = torch.zeros(len(cells), dtype=torch.float64)
    chunk_rows = max_rows or model.max_rows or _rows_for(model, n)
    for t, rows in rows_per_t.items():
        rows.sort(key=lambda r: r[2])
        for c0 in range(0, len(rows), chunk_rows):
            ch = rows[c0:c0 + chunk_rows]
            st = torch.tensor([r[2] for r in ch])
            samp = torch.tensor([1 + r[1] for r in ch], device=dev)
            kinds = [cells[r[0]][0] for r in ch]
            wins = [cells[r[0]][3] for r in ch]
            Hs = torch.empty(len(ch), n - t, a.d_model, device=dev, dtype=model.dtype)
            for k in range(int(st[0]), L + 1):
                new = (st == k).nonzero().flatten().tolist()
                if new:
                    lo, hi = new[0], new[-1] + 1
                    Hs[lo:hi] = pre[k][samp[lo:hi], t:]
                    hid = [i for i in range(lo, hi) if kinds[i] == "resid"]
                    if hid:
                        Hs[hid, 0] = pre[k][0, t]
                if k == L:
                    break
                na = int((st <= k).sum())
                if not na:
                    continue
                fix = {}
                for name, src in (("attn", aos), ("mlp", mos)):
                    rr = [i for i in range(na) if kinds[i] == name and k in wins[i]]
                    if rr:
                        fix[name] = (torch.tensor(rr, device=dev), src[k][t])
                Hs[:na], _ = R.layer(k, Hs[:na], t, Ks[k][samp[:na], :, :t], Vs[k][samp[:na], :, :t], fix=fix)
            p = prob(Hs[:, -1]).double().cpu()
            acc.index_add_(0, torch.tensor([r[0] for r in ch]), p)
    return p_clean, p_corrupt, (acc / S).float()
