"""Logit lens (nostalgebraist 2020): read the next-token distribution from every layer.

Each layer's ``resid_post`` is passed through the model's **real** final norm (with its learned
gain) and unembedding — the same two modules the model's own last layer goes through — so the
last layer's lens equals the model's output distribution exactly (tested).  Batched prompts are
left-padded and read at prompt-relative positions, so a batch gives the same grid as each prompt
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .remote import ships_with_requests
from .results import Result

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)


@dataclass
class LensResult(Result):
    """Logit lens of one prompt: ``probs[layer, pos]`` of the top token ``top_ids[layer, pos]``."""

    stem = "lens"
    tensor_fields = ("top_ids", "top_probs", "target_probs")

    prompt: str
    tokens: list[str]
    layers: list[int]
    top_ids: Int[Tensor, "layer pos"]
    top_probs: Float[Tensor, "layer pos"]
    top_tokens: list[list[str]]
    target: str | None = None
    target_probs: Float[Tensor, "layer pos"] | None = None
    model: str = ""

    def figure(self):
        """Layer × position heatmap of the top token's probability, labelled with the token (nostalgebraist 2020)."""
        import plotly.graph_objects as go

        from .figures import SEQUENTIAL, style

        z = self.top_probs.float().numpy()
        xt = [f"{i}:{t!r}"[:18] for i, t in enumerate(self.tokens)]
        fig = go.Figure(go.Heatmap(
            z=z, x=list(range(len(self.tokens))), y=self.layers, colorscale=SEQUENTIAL, zmin=0, zmax=1,
            text=[[t[:10] for t in row] for row in self.top_tokens], texttemplate="%{text}",
            textfont=dict(size=9), colorbar=dict(title="p(top-1)"),
            hovertemplate="layer %{y}, pos %{x}<br>top %{text}: p=%{z:.3f}<extra></extra>"))
        fig.update_xaxes(title="input token (position: text)", tickvals=list(range(len(xt))), ticktext=xt,
                         tickangle=-45)
        fig.update_yaxes(title="layer (resid_post)")
        return style(fig, title=f"Logit lens — {self.model}", width=max(700, 70 * len(self.tokens) + 200),
                     height=max(500, 18 * len(self.layers) + 200))


def lens_distribution(w, reads: dict, layers: Sequence[int]) -> Float[Tensor, "batch layer pos vocab"]:
    """Next-token probabilities of every read ``resid_post`` of ``layers`` through the model's real
    final norm and unembedding (``w.unembed``).  Runs where the model runs (``Model.run(reduce=)``)."""
    h = torch.stack([reads[("resid_post", l)] for l in layers], 1)  # batch layer pos d
    return w.unembed(h.to(w.W_U.device)).float().softmax(-1)


def lens_stats(w, reads: dict, layers: Sequence[int], target: int | None = None) -> dict:
    """Top-1 token, its probability and the target's probability (each ``[batch, layer, pos]``)
    of :func:`lens_distribution`: what a logit lens keeps of the whole vocabulary."""
    probs = lens_distribution(w, reads, layers)
    top_p, top_i = probs.max(-1)
    out = {"top_ids": top_i, "top_probs": top_p}
    if target is not None:
        out["target_probs"] = probs[..., target]
    return out


def lens_probs(model, prompts: str | Sequence[str], positions: Sequence[int] | None = None,
               layers: Sequence[int] | None = None) -> Float[Tensor, "batch layer pos vocab"]:
    """Per-layer next-token probabilities for a batch, at prompt-relative ``positions`` (the whole
    vocabulary: for a remote model prefer :func:`logit_lens`, whose statistics travel instead)."""
    batch = model.tokenize(prompts)
    layers = list(range(model.n_layers)) if layers is None else [model.adapter.check_layer(l) for l in layers]
    if positions is None:
        if batch.size > 1 and len(set(batch.lengths)) > 1:
            positions = [-1]
        else:
            positions = list(range(batch.lengths[0]))
    out = model.run(batch, reads="resid_post", layers=layers, positions=positions, logits="none",
                    reduce=lambda w, reads, _: lens_distribution(w, reads, layers))
    return out.reduced


def logit_lens(model, prompt: str, *, target: str | None = None,
               layers: Sequence[int] | None = None) -> LensResult:
    """Logit lens (nostalgebraist 2020) over every layer × position of ``prompt``.

    The final norm and unembedding run where the model runs; only the top token, its
    probability and the target's probability per (layer, position) come back.

    Args:
        target: a token string (e.g. ``" Paris"``) whose probability is also recorded.
    """
    layers = list(range(model.n_layers)) if layers is None else [model.adapter.check_layer(l) for l in layers]
    n = model.tokenize(prompt).lengths[0]
    tid = None if target is None else model.encode_target(target)[0]
    out = model.run(prompt, reads="resid_post", layers=layers, positions=list(range(n)), logits="none",
                    reduce=lambda w, reads, _: lens_stats(w, reads, layers, tid))
    st = {k: v[0] for k, v in out.reduced.items()}  # layer pos
    tok = model.tokenizer
    top_tokens = [[tok.decode([int(i)]) for i in row] for row in st["top_ids"]]
    return LensResult(prompt, model.to_str_tokens(prompt), layers, st["top_ids"], st["top_probs"], top_tokens,
                      target, st.get("target_probs"), model.name)
