"""RAG reliance scores: how much the FFNs add from memory, how much heads copy from the context.

Following ReDeEP (Sun et al. 2025, Jeryi-Sun/ReDEeP-ICLR) and LFD:

* **Parametric knowledge score** (PKS; LFD's internal knowledge score) of layer ``l`` at the
  last position: the Jensen–Shannon divergence between the logit-lens distributions of the
  residual stream *before* the MLP (``resid_mid``) and *after* it (``resid_post``), each passed
  through the model's real final norm and unembedding (``adapter.unembed``).  ``variant="jsd"``
  is textbook JSD in nats (``½KL(p‖m) + ½KL(q‖m)``, ``m = (p+q)/2``, summed over the
  vocabulary; in ``[0, ln 2]``).  ``variant="redeep"`` reproduces the paper's code, which
  averages the pointwise terms over the vocabulary instead of summing them and multiplies by
  1e6 — i.e. ``jsd / vocab_size · 1e6``; it ranks layers identically but its scale depends on
  the vocabulary.  A large PKS means that layer's FFN moved the prediction a lot.
* **External context score** (ECS) of head ``(l, h)``: take the last position's attention row
  of that head over the *context tokens* (``attn_pattern``), keep the top ``top_frac`` (10%,
  at least one) of those tokens, average their **final-layer hidden states** (last
  ``resid_post`` passed through the final norm — what Hugging Face returns as the last hidden
  state), and take the cosine with the last position's final hidden state.  A high ECS means
  the head attends to context tokens whose content the model's output state resembles.

The paper restricts attention to the retrieved context; here the context is the query's
``context:`` block of the few-shot prompt (:mod:`probes.prompts`), located by its token span.

:func:`compare_reliance` computes both on examples the model answered from the context and
examples it answered from memory (:mod:`probes.labels`) and compares the distributions
(means, AUROC of the score as a classifier, Mann–Whitney U p-value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.remote import ships_with_requests
from interp.results import Result

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)

VARIANTS = ("jsd", "redeep")


def check_variant(variant: str) -> None:
    """Raise a clear error for a JSD variant that is not one of :data:`VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown JSD variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def js_divergence(logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"], *,
                  variant: str = "jsd") -> Float[Tensor, "..."]:
    """Jensen–Shannon divergence between ``softmax(logits_p)`` and ``softmax(logits_q)`` (nats).

    ``variant="redeep"``: the ReDeEP code's scale (mean over the vocabulary × 1e6).
    """
    check_variant(variant)
    lp = logits_p.float().log_softmax(-1)
    lq = logits_q.float().log_softmax(-1)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    terms = 0.5 * (lp.exp() * (lp - lm)) + 0.5 * (lq.exp() * (lq - lm))
    if variant == "jsd":
        return terms.sum(-1).clamp_min(0)
    return terms.mean(-1) * 1e6


@torch.no_grad()
def parametric_knowledge_score(model, prompts: str | Sequence[str], *, layers: Sequence[int] | None = None,
                               variant: str = "jsd", batch_size: int = 16) -> Float[Tensor, "n layer"]:
    """PKS per layer at the last position: JSD of the logit lens before vs after the MLP (ReDeEP, Sun et
    al. 2025; LFD)."""
    a = model.adapter
    lay = list(range(model.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    check_variant(variant)
    out = []
    for i in range(0, len(prompts), batch_size):
        r = model.run(prompts[i:i + batch_size], reads=["resid_mid", "resid_post"], layers=lay, positions=[-1],
                      logits="none", max_rows=batch_size, reduce=lambda w, reads, _: pks_reduce(w, reads, lay, variant))
        out.append(r.reduced)
    return torch.cat(out)


def pks_reduce(w, reads: dict, layers: Sequence[int], variant: str) -> Float[Tensor, "b layer"]:
    """PKS of one chunk from its last-token ``resid_mid`` / ``resid_post`` reads, through the final
    norm and unembedding where the model runs (``Model.run(reduce=...)``)."""
    mid = torch.stack([reads["resid_mid", l][:, 0] for l in layers])  # L b d
    post = torch.stack([reads["resid_post", l][:, 0] for l in layers])
    return js_divergence(w.unembed(mid), w.unembed(post), variant=variant).T


def context_span(model, prompt: str, context: str) -> tuple[int, int]:
    """Token span ``[start, end)`` of the *last* occurrence of ``context`` in ``prompt``."""
    return model.token_span(prompt, context, occurrence=-1)


@torch.no_grad()
def external_context_score(model, prompts: str | Sequence[str], spans: Sequence[tuple[int, int]], *,
                           top_frac: float = 0.1, batch_size: int = 8) -> Float[Tensor, "n layer head"]:
    """ECS per head (ReDeEP, Sun et al. 2025): cos(last final hidden state, mean final hidden state of the head's
    top-``top_frac`` context tokens by attention from the last position).

    Args:
        spans: per prompt, the prompt-relative token span ``[start, end)`` of the context.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(spans) != len(prompts):
        from interp.errors import PromptError
        raise PromptError(f"{len(prompts)} prompts but {len(spans)} context spans")
    L = model.n_layers
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = model.tokenize(prompts[i:i + batch_size])
        rows = [(batch.abs_pos(j, -1), batch.pad[j] + spans[i + j][0], batch.pad[j] + spans[i + j][1])
                for j in range(batch.size)]
        # one chunk per batch, so the reduction's rows are the batch's
        r = model.run(batch, reads=["attn_pattern", ("resid_post", L - 1)], positions=None, logits="none",
                      max_rows=batch.size, reduce=lambda w, reads, _: ecs_reduce(w, reads, rows, top_frac))
        out.append(r.reduced)
    return torch.cat(out)


def ecs_reduce(w, reads: dict, rows: Sequence[tuple[int, int, int]], top_frac: float) -> Float[Tensor, "b layer head"]:
    """ECS of one chunk where the model runs (``Model.run(reduce=...)``): ``rows`` gives, per row,
    the last column and the context's columns ``[start, end)`` in the padded batch."""
    L = w.n_layers
    pat = torch.stack([reads["attn_pattern", l] for l in range(L)])  # L b H q k
    hid = w.final_norm(reads["resid_post", L - 1]).float()  # b w d
    out = []
    for j, (last, start, end) in enumerate(rows):
        cols = torch.arange(start, end, device=pat.device)
        att = pat[:, j, :, last, :][..., cols].float()  # L H c
        k = max(1, int(math.ceil(top_frac * len(cols))))
        top = att.topk(k, -1).indices  # L H k
        mean = hid[j, cols][top].mean(-2)  # L H d
        out.append(torch.nn.functional.cosine_similarity(mean, hid[j, last].expand_as(mean), dim=-1))
    return torch.stack(out)


@dataclass
class RelianceResult(Result):
    """PKS ``[n, layer]`` and ECS ``[n, layer, head]`` of examples labelled by answer source."""

    stem = "reliance"
    tensor_fields = ("pks", "ecs")
    json_tensors = False

    pks: Tensor
    ecs: Tensor
    source: list[str]
    layers: list[int]
    comparison: dict = field(default_factory=dict)
    variant: str = "jsd"
    model: str = ""
    dataset: str = ""
    #: ECS: the fraction of context tokens, by attention, whose hidden states are averaged
    top_frac: float = 0.1

    def figure(self):
        """PKS per layer: mean ± 95% CI for context-answer vs memory-answer examples."""
        import plotly.graph_objects as go

        from interp.figures import COLORS, style
        fig = go.Figure()
        for c, (name, col) in enumerate((("context", COLORS[0]), ("memory", COLORS[1]))):
            m = torch.tensor([s == name for s in self.source])
            if m.sum() == 0:
                continue
            x = self.pks[m]
            mu = x.mean(0)
            h = 1.96 * x.std(0) / math.sqrt(max(1, x.shape[0])) if x.shape[0] > 1 else torch.zeros_like(mu)
            fig.add_trace(go.Scatter(x=self.layers + self.layers[::-1], y=(mu + h).tolist() + (mu - h).tolist()[::-1],
                                     fill="toself", line=dict(width=0), fillcolor=col, opacity=0.2,
                                     hoverinfo="skip", showlegend=False))
            fig.add_trace(go.Scatter(x=self.layers, y=mu.tolist(), mode="lines+markers", line=dict(color=col),
                                     name=f"{name}-answer examples (n={int(m.sum())})"))
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title="PKS: JSD(logit lens before MLP, after MLP)" + (" ×1e6/V" if self.variant == "redeep" else " [nats]"))
        return style(fig, title=f"Parametric knowledge score per layer — {self.model}")

    def figure_ecs(self):
        """ECS per head: mean over context-answer minus mean over memory-answer examples."""
        import plotly.graph_objects as go

        from interp.figures import DIVERGING, style
        ctx = torch.tensor([s == "context" for s in self.source])
        mem = torch.tensor([s == "memory" for s in self.source])
        if ctx.sum() and mem.sum():
            z = self.ecs[ctx].mean(0) - self.ecs[mem].mean(0)
            title = "ECS per head: context-answer − memory-answer examples"
        else:
            z = self.ecs.mean(0)
            title = "ECS per head (mean)"
        fig = go.Figure(go.Heatmap(z=z.T.tolist(), x=self.layers, y=list(range(z.shape[1])), colorscale=DIVERGING,
                                   zmid=0, colorbar=dict(title="Δ ECS")))
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title="head")
        return style(fig, title=f"{title} — {self.model}", width=1000, height=420)


def _compare(a: Tensor, b: Tensor) -> dict:
    """Means, AUROC of the score for a-vs-b (a = positive), Mann–Whitney two-sided p."""
    from scipy.stats import mannwhitneyu

    from .linear import auroc
    if len(a) == 0 or len(b) == 0:
        return {"n_context": len(a), "n_memory": len(b), "note": "one group is empty: no comparison"}
    s = torch.cat([a, b])
    y = torch.cat([torch.ones(len(a)), torch.zeros(len(b))])
    p = float(mannwhitneyu(a.numpy(), b.numpy(), alternative="two-sided").pvalue)
    return {"n_context": len(a), "n_memory": len(b), "mean_context": float(a.mean()), "mean_memory": float(b.mean()),
            "auroc_context_vs_memory": float(auroc(s, y)), "mannwhitney_p": p}


def compare_reliance(model, prompts: Sequence[str], contexts: Sequence[str], source: Sequence[str], *,
                     variant: str = "jsd", top_frac: float = 0.1, model_name: str = "", dataset: str = "",
                     batch_size: int = 8) -> RelianceResult:
    """PKS and ECS (ReDeEP, Sun et al. 2025) of prompts labelled ``context`` / ``memory`` and the
    comparison of their distributions.

    Summaries: PKS summed over the second half of the layers (LFD looks there) and ECS averaged
    over all heads, per example; compared between the two groups.
    """
    keep = [i for i, s in enumerate(source) if s in ("context", "memory")]
    prompts = [prompts[i] for i in keep]
    contexts = [contexts[i] for i in keep]
    src = [source[i] for i in keep]
    pks = parametric_knowledge_score(model, prompts, variant=variant, batch_size=batch_size)
    spans = [context_span(model, p, c) for p, c in zip(prompts, contexts)]
    ecs = external_context_score(model, prompts, spans, top_frac=top_frac, batch_size=batch_size)
    L = model.n_layers
    ctx = torch.tensor([s == "context" for s in src])
    pks_late = pks[:, L // 2:].sum(-1)
    ecs_mean = ecs.mean((1, 2))
    comp = {"pks_late_sum": _compare(pks_late[ctx], pks_late[~ctx]),
            "ecs_mean": _compare(ecs_mean[ctx], ecs_mean[~ctx]),
            "pks_per_layer_context": pks[ctx].mean(0).tolist() if ctx.any() else None,
            "pks_per_layer_memory": pks[~ctx].mean(0).tolist() if (~ctx).any() else None,
            "lfd_layer_least_change": int(L // 2 + pks[:, L // 2:].mean(0).argmin())}
    return RelianceResult(pks, ecs, src, list(range(L)), comp, variant, model_name or model.name, dataset, top_frac)
