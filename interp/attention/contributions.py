"""Attention contributions: what each source token writes to the target through each head.

The attention output at the target ``t`` of layer ``l`` decomposes exactly into one vector per
(head ``h``, source ``s``) plus the output bias::

    attn_out[t] = Σ_h Σ_s  A[h, t, s] · (ln1(x_s) W_V^h + b_V^h) W_O^h   +   b_O

with ``x_s`` the block's input (``resid_pre``) at ``s`` and ``A`` the attention pattern.  Rotary
embeddings touch only queries and keys, and grouped-query attention only shares ``W_V`` between
query heads (the adapter's ``W_V`` is already expanded per query head), so the same formula holds
for Llama and GPT-2 — the test reconstructs ``attn_out`` from the pieces.  The contribution of
``s`` through ``h`` is the norm of that vector (SAT-probe measure of Yuksekgonul et al., used by
the RAG papers); the per-layer measure over heads is ``‖Σ_h …‖`` (the norm of the sum, as the
RAG papers write it), and a *group* (subject / context / rest) is the norm of its summed vector.
All of it comes from one forward (cached ``resid_pre`` + ``attn_pattern``), no intervention.

**Direct logit attribution** of head ``h``: its output at ``t`` (``Σ_s`` of its vectors) passed
through the final norm *linearised at the final residual* — divided by the final norm's scale
``σ`` of the model's own last residual ``x_final[t]`` (RMS for RMSNorm; standard deviation,
after centring the component, for LayerNorm), times the norm's gain — and the unembedding column
of the answer.  This is the usual DLA convention (TransformerLens ``apply_ln_to_stack`` with the
final residual's scale): the attributions of all residual components then add up to the answer's
logit minus the bias terms (tested on the full residual).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import SpanNotFoundError
from ..remote import ships_with_requests
from ..results import Result
from .knockout import _span, check_target, ensure_eager

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)


def head_source_vectors(w, reads: dict, logits, layers: Sequence[int], col: int, pad: int) -> dict:
    """Per-(layer, head, source) vectors written to the target column ``col`` of a one-prompt run
    (``reads``: ``resid_pre``, ``attn_pattern``, ``attn_out`` of ``layers``, the last
    ``resid_post``).  Runs where the model runs (``Model.run(reduce=...)``); every tensor has a
    leading batch axis of 1.  See :func:`contribution_vectors` for the fields."""
    src = slice(pad, col + 1)
    vecs, attn, bo, pats = [], [], [], []
    for l in layers:
        x = reads["resid_pre", l][0, src]                       # s d
        v = torch.einsum("sd,hde->hse", w.ln1[l](x), w.W_V(l)) + w.b_V(l)[:, None]
        A = reads["attn_pattern", l][0, :, col, src]            # h s
        vecs.append(torch.einsum("hs,hse,hem->hsm", A, v, w.W_O(l)).float())
        attn.append(reads["attn_out", l][0, col].float())
        bo.append(w.b_O(l).float())
        pats.append(A.float())
    out = {"vectors": torch.stack(vecs), "attn_out": torch.stack(attn), "b_O": torch.stack(bo),
           "pattern": torch.stack(pats), "resid_final": reads["resid_post", w.n_layers - 1][0, col].float(),
           "logits": logits[0].float()}
    return {k: v[None] for k, v in out.items()}


def contribution_stats(w, reads: dict, logits, layers: Sequence[int], col: int, pad: int,
                       groups: dict[str, list[int]], answer_id: int | None) -> dict:
    """What :class:`ContributionResult` keeps of :func:`head_source_vectors` — norms per head,
    source and group, and each head's DLA of the answer (default: the top-1) — computed where the
    model runs, so the ``[layer, head, source, d_model]`` vectors never travel."""
    d = {k: v[0] for k, v in head_source_vectors(w, reads, logits, layers, col, pad).items()}
    V = d["vectors"]                                  # L H S d
    gv = torch.stack([V[:, :, g].sum(2) for g in groups.values()], dim=2)   # L H G d
    aid = d["logits"].argmax() if answer_id is None else torch.tensor(answer_id)
    fn, _ = w.final_norm_linear(d["resid_final"])
    dla = fn(V.sum(2)) @ w.W_U[:, aid].float().to(V.device)       # L H
    out = {"head_src": V.norm(dim=-1), "layer_src": V.sum(1).norm(dim=-1), "head_group": gv.norm(dim=-1),
           "group_norm": gv.sum(1).norm(dim=-1), "dla": dla, "pattern": d["pattern"], "answer_id": aid}
    return {k: v[None] for k, v in out.items()}


def _run(model, prompt: str, target: int, layers: Sequence[int] | None, reduce) -> tuple:
    """One forward of ``prompt`` up to the target with the reads the contributions need, reduced by
    ``reduce(w, reads, logits, layers, col, pad)`` where the model runs.  Returns ``(t, layers,
    reduced)``."""
    ensure_eager(model)
    a = model.adapter
    n = model.tokenize(prompt).lengths[0]
    t = check_target(target, n)
    layers = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    reads = [(s, l) for l in layers for s in ("resid_pre", "attn_pattern", "attn_out")]
    reads.append(("resid_post", a.n_layers - 1))
    # positions after the target change nothing at the target (causal attention): never computed
    # and the target is then the last token, whose logits alone are unembedded
    batch = model.tokenize(prompt).head(t + 1)
    col, pad = batch.abs_pos(0, t), batch.pad[0]
    out = model.run(batch, reads=reads, logits="last",
                    reduce=lambda w, r, lg: reduce(w, r, lg, layers, col, pad))
    return t, layers, {k: v[0] for k, v in out.reduced.items()}


def contribution_vectors(model, prompt: str, target: int = -1, layers: Sequence[int] | None = None) -> dict:
    """Per-(layer, head, source) vectors written to the target, from one cached forward.

    Returns a dict with ``vectors`` ``[layer, head, src, d_model]`` (sources ``0..target``),
    ``attn_out`` ``[layer, d_model]`` (the model's own output at the target), ``b_O``
    ``[layer, d_model]``, ``pattern`` ``[layer, head, src]``, ``resid_final`` ``[d_model]``
    (last layer's ``resid_post`` at the target), ``logits`` ``[vocab]`` at the target, ``target``.
    (For a remote model all of it travels; :func:`attention_contributions` sends back only its
    statistics.)
    """
    t, layers, d = _run(model, prompt, target, layers, head_source_vectors)
    return {**d, "layers": layers, "target": t}


@dataclass
class ContributionResult(Result):
    """Contributions of each source token through each head to the target, and head DLA."""

    stem = "contributions"
    tensor_fields = ("head_src", "layer_src", "group_norm", "head_group", "dla", "pattern")

    prompt: str
    tokens: list[str]
    target: int
    layers: list[int]
    groups: dict[str, list[int]]
    group_names: list[str]
    answer: str
    answer_id: int
    head_src: Float[Tensor, "layer head src"]       # ‖A[h,t,s] v_s W_O^h‖
    layer_src: Float[Tensor, "layer src"]           # ‖Σ_h A[h,t,s] v_s W_O^h‖
    group_norm: Float[Tensor, "layer group"]        # ‖Σ_h Σ_{s∈g} …‖
    head_group: Float[Tensor, "layer head group"]   # ‖Σ_{s∈g} A[h,t,s] v_s W_O^h‖
    dla: Float[Tensor, "layer head"]                # head output's direct logit attribution
    pattern: Float[Tensor, "layer head src"]
    subject_range: list[int] | None = None
    context_range: list[int] | None = None
    model: str = ""
    engine: str = ""

    def figure(self, kind: str = "tokens", group: str | None = None):
        """``kind="tokens"``: layer × source-token heatmap of ‖Σ_h …‖; ``"heads"``: head × layer
        heatmap of one group's contribution (default the subject, else the first group);
        ``"dla"``: head × layer heatmap of direct logit attribution."""
        import plotly.graph_objects as go

        from ..figures import DIVERGING, SEQUENTIAL, style
        if kind == "tokens":
            xt = [f"{i}:{t!r}"[:16] for i, t in enumerate(self.tokens[: self.target + 1])]
            fig = go.Figure(go.Heatmap(z=self.layer_src.numpy(), x=list(range(len(xt))), y=self.layers,
                                       colorscale=SEQUENTIAL, colorbar=dict(title="‖Σ_h A·vW_O‖")))
            for name, rng in (("subject", self.subject_range), ("context", self.context_range)):
                if rng:
                    fig.add_vrect(x0=rng[0] - 0.5, x1=rng[1] - 0.5, line=dict(color="white", width=2),
                                  annotation_text=name, annotation_position="top left")
            fig.update_xaxes(title="source token (position: text)", tickvals=list(range(len(xt))),
                             ticktext=xt, tickangle=-45)
            fig.update_yaxes(title="layer")
            return style(fig, title=f"Attention contributions to position {self.target} — {self.model}",
                         width=max(700, 40 * len(xt) + 250), height=max(500, 16 * len(self.layers) + 200))
        if kind == "heads":
            g = group or ("subject" if "subject" in self.group_names else self.group_names[0])
            if g not in self.group_names:
                from ..errors import SettingError
                raise SettingError(f"group {g!r} is not a group of this result; choose from "
                                   f"{', '.join(self.group_names)} (subject/context need --subject/--context)")
            gi = self.group_names.index(g)
            z = self.head_group[:, :, gi].T.numpy()
            fig = go.Figure(go.Heatmap(z=z, x=self.layers, y=list(range(z.shape[0])), colorscale=SEQUENTIAL,
                                       colorbar=dict(title="‖Σ_s∈g A·vW_O‖")))
            fig.update_xaxes(title="layer")
            fig.update_yaxes(title="head")
            return style(fig, title=f"Per-head contribution of the {g} tokens → position {self.target}")
        if kind == "dla":
            z = self.dla.T.numpy()
            m = float(abs(z).max()) or 1.0
            fig = go.Figure(go.Heatmap(z=z, x=self.layers, y=list(range(z.shape[0])), colorscale=DIVERGING,
                                       zmin=-m, zmax=m, colorbar=dict(title="logit")))
            fig.update_xaxes(title="layer")
            fig.update_yaxes(title="head")
            return style(fig, title=f"Direct logit attribution of each head to {self.answer!r}")
        raise ValueError(f"kind must be 'tokens', 'heads' or 'dla', not {kind!r}")


def attention_contributions(model, prompt: str, *, target: int = -1, subject: str | None = None,
                            context: str | None = None, answer: str | None = None,
                            layers: Sequence[int] | None = None,
                            subject_occurrence: int = 0) -> ContributionResult:
    """Per-head, per-source contributions to the target and per-head DLA (one forward).

    Follows the SAT-probe attention contribution (Yuksekgonul et al. 2024) as used by the RAG
    papers (Wadhwa et al. 2024; Ghosh et al. 2024): ``‖A^{l,h}[t, s] · (x_s W_V^h) W_O^h‖``.

    Args:
        subject / context: texts in the prompt that define the groups ``subject`` and
            ``context``; every other source up to the target is ``rest``.
        answer: token for the DLA (default: the model's top-1 prediction at the target).
        subject_occurrence: which occurrence of the subject text (``-1``: the last).
    """
    n = model.tokenize(prompt).lengths[0]
    t = check_target(target, n)
    subj = _span(model, prompt, subject, "subject", subject_occurrence)
    ctx = _span(model, prompt, context, "context")
    groups: dict[str, list[int]] = {}
    if subj is not None:
        groups["subject"] = [p for p in range(*subj) if p <= t]
        if not groups["subject"]:
            raise SpanNotFoundError(f"subject {subject!r} lies after the target position {t}")
    if ctx is not None:
        groups["context"] = [p for p in range(*ctx) if p <= t and p not in groups.get("subject", [])]
        if not groups["context"]:
            raise SpanNotFoundError(f"context lies after the target position {t}")
    taken = {p for v in groups.values() for p in v}
    groups["rest"] = [p for p in range(t + 1) if p not in taken]
    names = list(groups)
    wanted = None if answer is None else model.encode_target(answer)[0]
    t, layers, st = _run(model, prompt, t, layers,
                         lambda w, r, lg, ls, col, pad: contribution_stats(w, r, lg, ls, col, pad, groups, wanted))
    aid = int(st["answer_id"])
    return ContributionResult(
        prompt=prompt, tokens=model.to_str_tokens(prompt), target=t, layers=layers,
        groups=groups, group_names=names, answer=model.tokenizer.decode([aid]), answer_id=aid,
        head_src=st["head_src"], layer_src=st["layer_src"], group_norm=st["group_norm"],
        head_group=st["head_group"], dla=st["dla"], pattern=st["pattern"],
        subject_range=list(subj) if subj else None,
        context_range=list(ctx) if ctx else None, model=model.name, engine=model.engine_name)
