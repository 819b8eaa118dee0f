"""Intrinsic evaluation of unlearning with parametric knowledge traces (Hong et al. 2024).

Behavioural tests ask whether a model still *says* a fact; ConceptVectors asks whether the
parameters that carry it changed.  For each concept vector ``v`` (a value vector, before) and
``v'`` (the same address in the other checkpoint):

* cosine ``cos(v, v')`` and relative L2 change ``‖v' − v‖ / ‖v‖``;
* Jaccard overlap of the top-k vocabulary tokens of ``v @ W_U`` and ``v' @ W_U'`` (each model's
  own unembedding, no final norm; k = 200 in the paper);
* beside them, the behavioural score: top-1 accuracy on facts about the concept vs unrelated
  facts, before and after.

To run that comparison end to end offline on the default model, two unlearning procedures are
included, both on a *copy* of the model (the original is never touched):

* :func:`gradient_ascent_unlearn` — the common fine-tuning baseline: maximise the LM loss on
  text about the concept (all parameters, Adam, a few steps);
* :func:`needle_unlearn` — "Needle" as described in the paper: add Gaussian noise to the concept
  vector, then gradient ascent with every gradient masked out except that vector's column;
* :func:`ablate_copy` — zero the vector outright (the causal upper bound).

The paper's finding is that fine-tuning-based unlearning barely moves the concept vectors while
editing the vector itself removes the knowledge; :func:`unlearning_eval` measures both on the
same concept so the claim can be checked on a small model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..errors import InterpError
from ..neurons.decode import check_neuron, check_same_shape
from ..results import Result
from .vectors import Vector, fact_scores


# ---------------------------------------------------------------------- intrinsic metrics
def _topk_ids(v: Tensor, W_U: Tensor, k: int) -> set[int]:
    with torch.no_grad():
        return set((v.to(W_U.dtype) @ W_U).topk(k).indices.tolist())


def intrinsic_compare(model_a, model_b, vectors: Sequence[Vector], *, k: int = 200) -> list[dict]:
    """Cosine, relative L2 change and top-k Jaccard of each vector between two checkpoints (Hong et al. 2024).

    Raises :class:`~interp.errors.CheckpointMismatchError` when the models' shapes differ.
    """
    a, b = model_a.adapter, model_b.adapter
    check_same_shape(a, b, getattr(model_a, "name", "model A"), getattr(model_b, "name", "model B"))
    rows = []
    for l, i in vectors:
        l, i = check_neuron(a, int(l), int(i))
        va, vb = a.W_out(l)[i].detach().float().cpu(), b.W_out(l)[i].detach().float().cpu()
        ta = _topk_ids(va, a.W_U.detach().float().cpu(), k)
        tb = _topk_ids(vb, b.W_U.detach().float().cpu(), k)
        rows.append({"layer": l, "index": i,
                     "cosine": float(torch.nn.functional.cosine_similarity(va, vb, dim=0)),
                     "rel_l2": float((vb - va).norm() / va.norm().clamp_min(1e-12)),
                     "jaccard": len(ta & tb) / len(ta | tb)})
    return rows


# ---------------------------------------------------------------------- unlearning procedures
def _copy_model(model):
    from ..model import Model
    hf = copy.deepcopy(model.hf)
    return Model(hf, model.tokenizer, "hf", name=f"{model.name}")


def _lm_batches(model, texts: Sequence[str], max_len: int, batch_size: int):
    tok = model.tokenizer
    windows = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        windows += [ids[s:s + max_len] for s in range(0, len(ids), max_len) if len(ids[s:s + max_len]) >= 8]
    if not windows:
        from ..errors import DatasetError
        raise DatasetError("no text to unlearn on: give texts of at least 8 tokens about the concept")
    out = []
    for s in range(0, len(windows), batch_size):
        ws = windows[s:s + batch_size]
        w = max(len(x) for x in ws)
        ids = torch.full((len(ws), w), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(ws), w), dtype=torch.long)
        for r, x in enumerate(ws):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        out.append((ids, mask))
    return out


def _ascent(model, texts, *, steps, lr, max_len, batch_size, params, grad_mask=None, log=None):
    hf = model.hf
    hf.train(False)  # no dropout: deterministic
    for p in hf.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    batches = _lm_batches(model, texts, max_len, batch_size)
    dev = model.device
    losses = []
    for step in range(steps):
        ids, mask = batches[step % len(batches)]
        ids, mask = ids.to(dev), mask.to(dev)
        labels = ids.masked_fill(mask == 0, -100)
        loss = hf(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        opt.zero_grad()
        (-loss).backward()  # gradient *ascent* on the concept's text
        if grad_mask is not None:
            for p, m in grad_mask:
                p.grad.mul_(m)
        opt.step()
        losses.append(float(loss.detach()))
    for p in hf.parameters():
        p.requires_grad_(False)
    return losses


def gradient_ascent_unlearn(model, texts: Sequence[str], *, steps: int = 10, lr: float = 2e-5,
                            max_len: int = 64, batch_size: int = 4):
    """A copy of ``model`` after gradient ascent on ``texts`` (all parameters, Adam).

    Returns ``(model_copy, losses)``; the LM loss should rise step by step.
    """
    m = _copy_model(model)
    losses = _ascent(m, texts, steps=steps, lr=lr, max_len=max_len, batch_size=batch_size,
                     params=[p for p in m.hf.parameters()])
    return m, losses


def needle_unlearn(model, texts: Sequence[str], vector: Vector, *, sigma: float = 0.1, steps: int = 10,
                   lr: float = 1e-3, max_len: int = 64, batch_size: int = 4, seed: int = 0):
    """"Needle" (Hong et al. 2024): noise on the concept vector, then gradient ascent restricted to that vector.

    Returns ``(model_copy, losses)``.
    """
    layer, index = check_neuron(model.adapter, int(vector[0]), int(vector[1]))
    m = _copy_model(model)
    a = m.adapter
    w = a.down[layer].weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        row = a.W_out(layer)[index]
        row.add_((torch.randn(row.shape, generator=g) * sigma).to(row.device, row.dtype))
    mask = a.value_vector_mask(layer, index)
    losses = _ascent(m, texts, steps=steps, lr=lr, max_len=max_len, batch_size=batch_size, params=[w],
                     grad_mask=[(w, mask)])
    return m, losses


def ablate_copy(model, vectors: Sequence[Vector]):
    """A copy of ``model`` with the vectors zeroed (the knowledge trace removed outright)."""
    m = _copy_model(model)
    with torch.no_grad():
        for l, i in vectors:
            l, i = check_neuron(m.adapter, int(l), int(i))
            m.adapter.W_out(l)[i].zero_()
    return m


# ---------------------------------------------------------------------- evaluation
@dataclass
class UnlearningResult(Result):
    """Intrinsic (vector) and behavioural (facts) change of each unlearning method."""

    stem = "concept_unlearning"

    model: str
    concept: str
    vectors: list[list[int]]
    k: int
    #: before: {"related_acc", "unrelated_acc", "related_p", "unrelated_p", "n_related", "n_unrelated"}
    before: dict
    #: method -> {"intrinsic": [per-vector rows], "related_acc", "unrelated_acc", ..., "losses": [...]}
    methods: dict
    settings: dict = field(default_factory=dict)

    def figure(self):
        """Intrinsic change of the concept vector (left) and accuracy on related / unrelated facts (right) per method."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import style
        names = list(self.methods)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("concept vector (intrinsic)", "behaviour: top-1 accuracy"))
        for key, lab in (("cosine", "cosine before/after"), ("jaccard", f"top-{self.k} Jaccard"),
                         ("rel_l2", "relative L2 change")):
            fig.add_trace(go.Bar(x=names, y=[self.methods[n]["intrinsic"][0][key] for n in names], name=lab), 1, 1)
        fig.add_trace(go.Bar(x=["before"] + names, y=[self.before["related_acc"]] +
                             [self.methods[n]["related_acc"] for n in names], name="facts about the concept"), 1, 2)
        fig.add_trace(go.Bar(x=["before"] + names, y=[self.before["unrelated_acc"]] +
                             [self.methods[n]["unrelated_acc"] for n in names], name="unrelated facts"), 1, 2)
        vv = ", ".join(f"L{l}:{i}" for l, i in self.vectors)
        return style(fig, title=f"Unlearning {self.concept!r}: concept vector {vv} vs behaviour", width=1100)


def _behaviour(model, related, unrelated) -> dict:
    ok_r, p_r, _ = fact_scores(model, related)
    ok_u, p_u, _ = fact_scores(model, unrelated)
    return {"related_acc": float(ok_r.float().mean()) if len(related) else float("nan"),
            "unrelated_acc": float(ok_u.float().mean()) if len(unrelated) else float("nan"),
            "related_p": float(p_r.mean()) if len(related) else float("nan"),
            "unrelated_p": float(p_u.mean()) if len(unrelated) else float("nan"),
            "n_related": len(related), "n_unrelated": len(unrelated)}


def unlearning_eval(model, concept: str, vectors: Sequence[Vector], *, texts: Sequence[str], related_facts,
                    unrelated_facts, methods: Sequence[str] = ("gradient_ascent", "needle", "ablate"),
                    k: int = 200, steps: int = 10, ga_lr: float = 2e-5, needle_lr: float = 1e-3,
                    sigma: float = 0.1, seed: int = 0) -> UnlearningResult:
    """Intrinsic evaluation of unlearning (Hong et al. 2024): run each unlearning method on a copy of
    the model; report intrinsic + behavioural change.

    ``texts`` is what gradient ascent unlearns (e.g. the concept's ``wikipedia_content`` and its
    known facts' prompts + answers); ``vectors[0]`` is the one Needle edits.
    """
    if not vectors:
        raise InterpError("no concept vectors to evaluate: find some with find_concept_vectors first")
    vecs = [list(check_neuron(model.adapter, int(l), int(i))) for l, i in vectors]
    known = {"gradient_ascent", "needle", "ablate"}
    bad = [m for m in methods if m not in known]
    if bad:
        raise InterpError(f"unknown unlearning methods {bad}; valid: {sorted(known)}")
    before = _behaviour(model, related_facts, unrelated_facts)
    res = {}
    for name in methods:
        losses: list[float] = []
        if name == "gradient_ascent":
            m, losses = gradient_ascent_unlearn(model, texts, steps=steps, lr=ga_lr)
        elif name == "needle":
            m, losses = needle_unlearn(model, texts, vecs[0], sigma=sigma, steps=steps, lr=needle_lr, seed=seed)
        else:
            m = ablate_copy(model, vecs)
        res[name] = {"intrinsic": intrinsic_compare(model, m, vecs, k=k), **_behaviour(m, related_facts, unrelated_facts),
                     "losses": losses}
        del m
    settings = {"steps": steps, "ga_lr": ga_lr, "needle_lr": needle_lr, "sigma": sigma, "seed": seed,
                "n_texts": len(texts)}
    return UnlearningResult(model.name, concept, vecs, k, before, res, settings)
