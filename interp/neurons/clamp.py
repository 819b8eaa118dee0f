"""Neuron clamping: set MLP neurons to a value and watch a token's probability move (Davies 2025).

A clamp is an ``InterventionPlan.set("mlp_post", layer, row, positions, value, unit=neuron)``
edit, so it runs under every engine and batches like any other intervention: the clean prompt
and every clamped variant (neurons × values) are rows of **one** forward.  ``positions=None``
clamps every token of the prompt (the neuron is "held on" throughout, as in Davies' clamping
experiments); a list such as ``[-1]`` clamps only there.

Generation (:func:`clamp_generate`) is greedy and re-runs the whole sequence at every step
through :meth:`Model.run` — no key/value cache, so it stays engine-independent and every
generated token is clamped too (``positions="all"``) or only the prompt (``"prompt"``).  That is
quadratic in length and meant for short answers (tens of tokens).

Clamp values are in activation units (the input of the down-projection).  Gated activations of
a SwiGLU MLP are small (|a| mostly < 1 in the default model); a neuron's effect on the logits
grows linearly with the value through its value vector, so demonstrations sweep a few values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InterpError, PromptError
from ..interventions import InterventionPlan
from ..results import Result
from ..tokens import Batch
from .decode import check_neuron

Neuron = tuple[int, int]


def _check_neurons(model, neurons) -> list[Neuron]:
    if not neurons:
        raise InterpError("no neurons to clamp: give a list of (layer, neuron) pairs")
    if isinstance(neurons, tuple) and len(neurons) == 2 and isinstance(neurons[0], int):
        neurons = [neurons]
    return [check_neuron(model.adapter, int(l), int(n)) for l, n in neurons]


def clamp_plan(model, batch: Batch, neurons: Sequence[Neuron], value: float | Sequence[float], *,
               positions: Sequence[int] | None = None, rows: Sequence[int] | None = None,
               plan: InterventionPlan | None = None) -> InterventionPlan:
    """Add clamp edits (``mlp_post`` set, ``unit=neuron``) for ``rows`` of ``batch`` to a plan.

    ``value`` is one number for every neuron or one per neuron; ``positions`` are
    prompt-relative (None: every token of each row).
    """
    neurons = _check_neurons(model, neurons)
    vals = [float(value)] * len(neurons) if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != len(neurons):
        raise InterpError(f"{len(vals)} clamp values for {len(neurons)} neurons: give one value or one per neuron")
    plan = plan if plan is not None else InterventionPlan(batch)
    for r in (range(batch.size) if rows is None else rows):
        pos = list(range(batch.lengths[r])) if positions is None else list(positions)
        for (l, n), v in zip(neurons, vals):
            plan.set("mlp_post", l, r, pos, torch.tensor(v), unit=n)
    return plan


@dataclass
class ClampResult(Result):
    """Target-token probability with and without clamping, per prompt and clamp value."""

    stem = "neuron_clamp"
    tensor_fields = ("p_clean", "p_clamped", "clean_activation")

    model: str
    prompts: list[str]
    neurons: list[list[int]]
    values: list[float]
    positions: list[int] | None
    target: str
    target_id: int
    p_clean: Float[Tensor, "prompt"]
    p_clamped: Float[Tensor, "value prompt"]
    clean_activation: Float[Tensor, "prompt neuron"]
    top_clean: list[str] = field(default_factory=list)
    top_clamped: list[list[str]] = field(default_factory=list)
    engine: str = "hf"

    @property
    def ratio(self) -> Float[Tensor, "value prompt"]:
        """``p_clamped / p_clean`` per value and prompt."""
        return self.p_clamped / self.p_clean.clamp_min(1e-12)

    def figure(self):
        """The target's probability against the clamped value, one line per prompt (log scale)."""
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        for i, p in enumerate(self.prompts):
            fig.add_trace(go.Scatter(x=[0.0] + list(self.values),
                                     y=[float(self.p_clean[i])] + self.p_clamped[:, i].tolist(),
                                     mode="lines+markers", name=p[:40]))
        fig.update_xaxes(title="clamp value (x=0: clean run, no clamp)")
        fig.update_yaxes(title=f"p({self.target!r})", type="log")
        nn = ", ".join(f"L{l}N{n}" for l, n in self.neurons)
        return style(fig, title=f"Clamping {nn} → p({self.target!r})")


def clamp_effect(model, prompts: str | Sequence[str], neurons: Sequence[Neuron],
                 values: float | Sequence[float], target: str | int, *,
                 positions: Sequence[int] | None = None) -> ClampResult:
    """Neuron clamping (Davies 2025): probability of ``target`` at the last token, clean vs each clamp
    value, in one forward.

    Args:
        neurons: ``(layer, neuron)`` pairs, all clamped together.
        values: one clamp value or a list (one world per value).
        target: token string (first token used, e.g. ``" dog"``) or id.
        positions: prompt-relative positions to clamp (None: all).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise PromptError("no prompts given")
    neurons = _check_neurons(model, neurons)
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    tid = int(target) if isinstance(target, int) else model.encode_target(target)[0]
    base = model.tokenize(prompts)
    n = base.size
    batch = base.select(list(range(n)) * (1 + len(values)))
    plan = InterventionPlan(batch)
    for vi, v in enumerate(values):
        clamp_plan(model, batch, neurons, v, positions=positions,
                   rows=range((vi + 1) * n, (vi + 2) * n), plan=plan)
    reads = sorted({("mlp_post", l) for l, _ in neurons})
    out = model.run(plan=plan, reads=reads, positions=[-1], logits="last")
    probs = out.logits.float().softmax(-1)
    p = probs[:, tid]
    act = torch.stack([out.cache["mlp_post", l][:n, 0, i] for l, i in neurons], -1).float()
    tops = probs.argmax(-1).tolist()
    dec = model.tokenizer.decode
    tstr = target if isinstance(target, str) else dec([tid])
    return ClampResult(model.name, prompts, [list(x) for x in neurons], values,
                       None if positions is None else list(positions), tstr, tid, p[:n].clone(),
                       p[n:].reshape(len(values), n).clone(), act, [dec([t]) for t in tops[:n]],
                       [[dec([t]) for t in tops[(vi + 1) * n:(vi + 2) * n]] for vi in range(len(values))],
                       model.engine_name)


def _ids_batch(tokenizer, seqs: Sequence[Sequence[int]]) -> Batch:
    """A left-padded Batch from token ids (no re-tokenisation of generated text)."""
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(list(s))
        mask[r, width - len(s):] = 1
    return Batch([tokenizer.decode(list(s)) for s in seqs], ids, mask, [len(s) for s in seqs],
                 [[(0, 0)] * len(s) for s in seqs], "left")


def generate_greedy(model, prompt: str, max_new_tokens: int = 20, *, neurons: Sequence[Neuron] = (),
                    value: float | Sequence[float] = 0.0, positions: str | Sequence[int] = "all",
                    stop_at_eos: bool = True) -> list[int]:
    """Greedy continuation of ``prompt`` (token ids), optionally with neurons clamped.

    ``positions``: ``"all"`` clamps every token including generated ones, ``"prompt"`` only the
    prompt's tokens, or a list of prompt-relative positions.
    """
    if positions not in ("all", "prompt") and isinstance(positions, str):
        raise InterpError(f"positions must be 'all', 'prompt' or a list, not {positions!r}")
    ids = model.tokenize(prompt).token_ids(0)
    n_prompt = len(ids)
    eos = model.tokenizer.eos_token_id
    new: list[int] = []
    for _ in range(max_new_tokens):
        b = _ids_batch(model.tokenizer, [ids + new])
        plan = InterventionPlan(b)
        if neurons:
            pos = (None if positions == "all" else list(range(n_prompt)) if positions == "prompt"
                   else list(positions))
            clamp_plan(model, b, neurons, value, positions=pos, plan=plan)
        lg = model.run(plan=plan, logits="last").logits[0]
        t = int(lg.argmax())
        new.append(t)
        if stop_at_eos and t == eos:
            break
    return new


def clamp_generate(model, prompt: str, neurons: Sequence[Neuron], value: float | Sequence[float], *,
                   max_new_tokens: int = 20, positions: str | Sequence[int] = "all") -> dict:
    """Greedy generation without and with the clamp (Davies 2025's "dog" neuron): ``{"clean": text,
    "clamped": text, ...}``."""
    neurons = _check_neurons(model, neurons)
    clean = generate_greedy(model, prompt, max_new_tokens)
    clamped = generate_greedy(model, prompt, max_new_tokens, neurons=neurons, value=value, positions=positions)
    dec = model.tokenizer.decode
    return {"prompt": prompt, "neurons": [list(x) for x in neurons], "value": value,
            "clean": dec(clean), "clamped": dec(clamped), "clean_ids": clean, "clamped_ids": clamped}


def clamp_demo(model, nmap, *, prompt: str = "My favourite word is", direction: str = "out",
               layers: Sequence[int] | None = None, values: Sequence[float] = (2.0, 5.0, 10.0),
               n_candidates: int = 24) -> dict:
    """Find a decoded neuron whose clamping raises its own top token's probability.

    Candidates: neurons of ``direction`` whose top-1 token is a word (leading space, letters),
    strongest top score first.  Each candidate × value is one row of a single forward; returns
    the best candidate's numbers and the table of all tried.
    """
    from .decode import vocab_strings
    vocab = vocab_strings(model.tokenizer, nmap.vocab_size)
    d = nmap.directions.index(direction)
    lay = nmap.layers if layers is None else list(layers)
    cands = []
    for layer in lay:
        li = nmap.layers.index(layer)
        ids, sc = nmap.top_ids[d, li, :, 0], nmap.top_scores[d, li, :, 0]
        for n in sc.argsort(descending=True)[:200].tolist():
            s = vocab[int(ids[n])]
            if s.startswith(" ") and s[1:].isalpha() and len(s) > 3:
                cands.append((float(sc[n]), layer, n, int(ids[n])))
    cands.sort(reverse=True)
    cands = cands[:n_candidates]
    if not cands:
        raise InterpError("no candidate neuron has a word as its top token in the given layers")
    base = model.tokenize(prompt)
    nv = len(values)
    batch = base.select([0] * (1 + len(cands) * nv))
    plan = InterventionPlan(batch)
    for ci, (_, l, n, _) in enumerate(cands):
        for vi, v in enumerate(values):
            clamp_plan(model, batch, [(l, n)], v, rows=[1 + ci * nv + vi], plan=plan)
    probs = model.run(plan=plan, logits=lambda lg: lg.float().softmax(-1)).logits
    rows = []
    for ci, (s, l, n, tid) in enumerate(cands):
        pc = float(probs[0, tid])
        pv = [float(probs[1 + ci * nv + vi, tid]) for vi in range(nv)]
        rows.append({"layer": l, "neuron": n, "direction": direction, "top_token": vocab[tid],
                     "token_id": tid, "top_score": s, "p_clean": pc, "p_clamped": pv,
                     "best_ratio": max(pv) / max(pc, 1e-12),
                     "top_after": [vocab[int(probs[1 + ci * nv + vi].argmax())] for vi in range(nv)]})
    rows.sort(key=lambda r: -r["best_ratio"])
    return {"prompt": prompt, "values": list(values), "best": rows[0], "tried": rows}
