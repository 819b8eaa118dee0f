"""Path patching (Wang et al. 2022, "Interpretability in the Wild"; Goldowsky-Dill et al. 2023,
"Localizing Model Behavior with Path Patching"): the effect of a *sender* on a *receiver* along
the direct paths between them only.

Design note
-----------
Activation patching a head measures every path from it to the output.  Path patching asks how
much of that goes *directly* into a receiver.  Wang et al.'s recipe, with x_orig the base prompt
and x_new the source prompt (``direction="noise"``: base = clean, source = corrupt, as in the
IOI paper; ``"denoise"`` swaps them):

1. run x_orig with the sender's output taken from x_new and **every attention head after the
   sender frozen** to its x_orig output (MLPs are recomputed, as in the paper, or frozen too with
   ``freeze_mlps=True``); read the receiver's input there;
2. run x_orig with only the receiver's input replaced by that value; the metric is the answer.

Everything is rows of **one** :class:`~interp.interventions.InterventionPlan`, one forward:

* row 0 = clean, row 1 = corrupt (no edits);
* per sender, a *stage-1* row: the base prompt with ``set`` edits — the sender (``attn_z`` of one
  head, or ``mlp_out``) copied from the source row, and ``attn_z`` of all heads of every later
  layer below the receiver (and ``mlp_out`` with ``freeze_mlps``) copied from the base row;
* receivers: ``"logits"`` — the residual stream at the last position after the last layer, so
  the stage-1 row's own logits are the answer (after the last layer nothing mixes positions);
  ``("resid", r)`` — the residual entering layer ``r`` at the last position: a *stage-2* row copies
  it from its stage-1 row (``source_row``) and recomputes layers ``r…`` normally;
  ``("q", r, h)`` / ``("k", r, h)`` / ``("v", r, h)`` — the queries / keys / values of head ``h`` of
  layer ``r`` (Wang et al.'s S-inhibition → name-mover paths go into the name movers' queries):
  the stage-2 row copies that head's ``attn_q`` / ``attn_k`` / ``attn_v`` from its stage-1 row,
  queries at the last position, keys and values at every position (a head reads the keys and
  values of all earlier tokens), unless ``receiver_positions`` says otherwise.  ``h`` of a key
  or value counts the model's KV heads (grouped-query attention shares one between several
  query heads, so a path into it reaches all of them).

Metric: the patched metric per sender, ``effect = value − base metric`` and ``normalized``
(``effect / (source − base)``, the fraction of the total clean↔corrupt difference carried by the
path; negative in the noising direction when the path supports the clean answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..arch import QKV_SITES
from ..errors import InterventionError, LayerIndexError
from ..interventions import InterventionPlan
from .patching import PairResult, metric_fn, pair_positions, prepare_pair

SENDER_KINDS = ("head", "mlp")


@dataclass(frozen=True)
class Sender:
    """A head (``kind="head"``, ``layer``, ``head``) or an MLP (``kind="mlp"``, ``layer``)."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        """``L{layer}H{head}`` or ``MLP{layer}``."""
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"


def _senders(model, senders, receiver_layer: int) -> list[Sender]:
    a = model.adapter
    if senders is None:
        return [Sender("head", l, h) for l in range(receiver_layer) for h in range(a.n_heads)] + \
               [Sender("mlp", l) for l in range(receiver_layer)]
    out = []
    for s in senders:
        s = s if isinstance(s, Sender) else Sender(*s)
        if s.kind not in SENDER_KINDS:
            raise InterventionError(f"sender kind {s.kind!r} unknown; senders are ('head', layer, head) or "
                                    f"('mlp', layer)")
        layer = a.check_layer(s.layer)
        if layer >= receiver_layer:
            raise LayerIndexError(f"sender {s.label} is not before the receiver (layer {receiver_layer}): a path "
                                  f"runs from an earlier layer to a later one")
        if s.kind == "head" and (s.head is None or not 0 <= s.head < a.n_heads):
            raise LayerIndexError(f"sender head {s.head!r} out of range 0..{a.n_heads - 1}")
        out.append(Sender(s.kind, layer, s.head))
    return out


#: receiver kinds that address one head's input, and the site each copies in stage 2
HEAD_RECEIVERS = {site[-1]: site for site in QKV_SITES}


@dataclass(frozen=True)
class Receiver:
    """Where the paths end: ``layer`` (n_layers for the logits), the stage-2 ``site`` (None: the
    stage-1 row's logits are the answer), its ``unit`` (a head) and default ``positions``
    (``"last"`` or ``"all"``)."""

    layer: int
    site: str | None = None
    unit: int | None = None
    positions: str = "last"
    label: str = "logits"


def _receiver(model, receiver) -> Receiver:
    """``"logits"``, ``("resid", r)`` or ``("q" | "k" | "v", r, head)`` as a :class:`Receiver`."""
    a = model.adapter
    if receiver == "logits":
        return Receiver(model.n_layers)
    kind = receiver[0] if isinstance(receiver, (tuple, list)) and receiver else None
    if kind == "resid" and len(receiver) == 2:
        r = a.check_layer(receiver[1])
        if r == 0:
            raise LayerIndexError("receiver ('resid', 0) has no sender before it; use a later layer")
        return Receiver(r, "resid_pre", None, "last", f"resid_pre {r} (last position)")
    if kind in HEAD_RECEIVERS and len(receiver) == 3:
        r = a.check_layer(receiver[1])
        if r == 0:
            raise LayerIndexError(f"receiver {tuple(receiver)!r} has no sender before it; use a later layer")
        n = a.n_heads if kind == "q" else a.n_kv_heads
        h = receiver[2]
        if not isinstance(h, int) or not 0 <= h < n:
            what = "head" if kind == "q" else "KV head"
            why = "" if kind == "q" else f" (keys and values have the model's {n} KV heads)"
            raise LayerIndexError(f"receiver {what} {h!r} out of range 0..{n - 1}{why}")
        where = "last position" if kind == "q" else "every position"
        return Receiver(r, HEAD_RECEIVERS[kind], h, "last" if kind == "q" else "all",
                        f"{HEAD_RECEIVERS[kind]} L{r}{'H' if kind == 'q' else 'KV'}{h} ({where})")
    raise InterventionError(f"receiver must be 'logits', ('resid', layer) or ('q' | 'k' | 'v', layer, head), "
                            f"not {receiver!r}")


@dataclass
class PathPatchingResult(PairResult):
    """Path-patched metric per sender, and the grids ``heads [layer, head]`` / ``mlps [layer]``."""

    stem = "path_patching"

    receiver: str
    senders: list[list]  # [kind, layer, head or None]
    values: list[float]
    n_layers: int
    n_heads: int
    freeze_mlps: bool = False
    positions: list[int] | None = None
    settings: dict = field(default_factory=dict)
    model: str = ""

    def effect(self) -> Float[Tensor, "sender"]:
        """Per sender: path-patched metric minus the base run's."""
        return torch.tensor(self.values, dtype=torch.float64) - self.base_metric

    def normalized(self) -> Float[Tensor, "sender"]:
        """Per sender: the effect as a fraction of the whole clean–corrupt gap (NaN if there is none)."""
        return self.normalize(torch.tensor(self.values, dtype=torch.float64))

    def head_grid(self, normalized: bool = True, values: Tensor | None = None) -> Float[Tensor, "layer head"]:
        """Per-head values (NaN where a head was not a sender); ``values``: one per sender instead."""
        v = values if values is not None else self.normalized() if normalized else self.effect()
        g = torch.full((self.n_layers, self.n_heads), float("nan"), dtype=torch.float64)
        for (kind, l, h), x in zip(self.senders, v):
            if kind == "head":
                g[l, h] = x
        return g

    def mlp_grid(self, normalized: bool = True, values: Tensor | None = None) -> Float[Tensor, "layer"]:
        """Per-MLP values (NaN where an MLP was not a sender); ``values``: one per sender instead."""
        v = values if values is not None else self.normalized() if normalized else self.effect()
        g = torch.full((self.n_layers,), float("nan"), dtype=torch.float64)
        for (kind, l, _), x in zip(self.senders, v):
            if kind == "mlp":
                g[l] = x
        return g

    def figure(self):
        """Heads as a layer × head heatmap and MLPs as a column (:func:`path_patching_figure`)."""
        return path_patching_figure(self)


def build_path_plan(model, pair_batch, senders: list[Sender], receiver: Receiver, *, base_row: int, src_row: int,
                    positions: list[int] | None, freeze_mlps: bool, receiver_positions: list[int] | None = None
                    ) -> tuple[InterventionPlan, list[int]]:
    """The plan of the design note; returns it and, per sender, the row whose logits are the answer."""
    n = pair_batch.lengths[0]
    every = list(range(n))
    pos = every if positions is None else list(positions)
    receiver_layer = receiver.layer
    rpos = receiver_positions if receiver_positions is not None else \
        [n - 1] if receiver.positions == "last" else every
    stage1 = len(senders)
    stage2 = len(senders) if receiver.site is not None else 0
    plan = InterventionPlan(pair_batch.select([0, 1] + [base_row] * (stage1 + stage2)))
    answer_rows = []
    for i, s in enumerate(senders):
        r1 = 2 + i
        if s.kind == "head":
            plan.set("attn_z", s.layer, r1, pos, source_row=src_row, unit=s.head)
        else:
            plan.set("mlp_out", s.layer, r1, pos, source_row=src_row)
        for l in range(s.layer + 1, receiver_layer):
            plan.set("attn_z", l, r1, every, source_row=base_row)
        if freeze_mlps:
            for l in range(s.layer + (1 if s.kind == "mlp" else 0), receiver_layer):
                plan.set("mlp_out", l, r1, every, source_row=base_row)
        if stage2:
            r2 = 2 + stage1 + i
            plan.set(receiver.site, receiver_layer, r2, rpos, source_row=r1, unit=receiver.unit)
            answer_rows.append(r2)
        else:
            answer_rows.append(r1)
    return plan, answer_rows


def path_patching(model, clean: str, corrupt: str, *, senders: Sequence | None = None,
                  receiver="logits", direction: str = "noise", metric: str | Callable = "logit_diff",
                  answer: str | None = None, wrong: str | None = None, positions: Sequence[int] | None = None,
                  freeze_mlps: bool = False, receiver_positions: Sequence[int] | None = None,
                  max_rows: int | None = None, progress: bool = False) -> PathPatchingResult:
    """Path patching from each sender to the receiver (see the module note), one batched forward.

    Args:
        clean, corrupt: prompts of equal token length.
        senders: ``("head", layer, head)`` / ``("mlp", layer)`` tuples or :class:`Sender`; default
            every head and MLP before the receiver.
        receiver: ``"logits"`` (the final residual at the last position), ``("resid", r)``, or
            ``("q" | "k" | "v", r, head)`` (a head's queries / keys / values; see the module note).
        direction: ``"noise"`` (Wang et al.: clean run, sender from the corrupted one) or ``"denoise"``.
        positions: positions where the sender is patched (default all; prompt-relative).
        freeze_mlps: freeze MLP outputs too, so only the direct residual path remains.
        receiver_positions: positions where the receiver's input is replaced (default: the last
            for ``resid`` and ``q``, all for ``k`` / ``v``; prompt-relative).
    """
    if direction not in ("noise", "denoise"):
        raise InterventionError(f"direction must be 'noise' (sender from the corrupted run into the clean one, "
                                f"as Wang et al.) or 'denoise', not {direction!r}")
    setup = prepare_pair(model, clean, corrupt, answer=answer, wrong=wrong)
    rcv = _receiver(model, receiver)
    snd = _senders(model, senders, rcv.layer)
    positions, receiver_positions = (None if p is None else pair_positions(p, setup.n)
                                     for p in (positions, receiver_positions))
    if receiver_positions is not None and rcv.site is None:
        raise InterventionError("receiver_positions applies to a receiver inside the model, not to 'logits'")
    fn, mname = metric_fn(model, metric, setup.answer_id, setup.wrong_id)
    base_row, src_row = (0, 1) if direction == "noise" else (1, 0)
    pair = model.tokenize([setup.clean_text, setup.corrupt_text])
    plan, rows = build_path_plan(model, pair, snd, rcv, base_row=base_row, src_row=src_row, positions=positions,
                                 freeze_mlps=freeze_mlps, receiver_positions=receiver_positions)
    v = model.run(plan=plan, logits=fn, max_rows=max_rows, progress=progress).logits.double().cpu()
    return PathPatchingResult(setup.clean_text, setup.corrupt_text, setup.tokens, direction, mname, setup.answer,
                              setup.wrong, float(v[0]), float(v[1]),
                              rcv.label if receiver_positions is None else
                              f"{rcv.label.split(' (')[0]} (positions {receiver_positions})",
                              [[s.kind, s.layer, s.head] for s in snd], v[rows].tolist(), model.n_layers,
                              model.adapter.n_heads, freeze_mlps, positions,
                              {"engine": model.engine_name, "frozen": "attention heads of layers after the sender"
                               + (" and MLPs" if freeze_mlps else " (MLPs recomputed)"),
                               "sender_site": {"head": "attn_z (one head)", "mlp": "mlp_out"},
                               "receiver_site": rcv.site, "receiver_unit": rcv.unit,
                               "receiver_positions": receiver_positions}, model.name)


def path_patching_figure(res: PathPatchingResult, title: str | None = None, values: Tensor | None = None,
                         marks: Tensor | None = None):
    """Heatmap of the normalised path effect per head (layer × head), with the MLPs as a last column.

    ``values`` (one per sender, NaN = blank) replaces the result's own normalised effects, e.g. a
    mean over prompts; ``marks`` (one bool per sender) puts a ``*`` on those cells, e.g. the
    senders significant after a multiple-comparison correction (:meth:`interp.stats.CellStats.significant`).
    """
    import plotly.graph_objects as go

    from ..figures import DIVERGING, style

    g = res.head_grid(values=values)
    m = res.mlp_grid(values=values)
    top = max((l for _, l, _ in res.senders), default=res.n_layers - 1) + 1   # no rows above the last sender
    z = torch.cat([g, m[:, None]], 1)[:top].numpy()
    x = [f"H{h}" for h in range(res.n_heads)] + ["MLP"]
    lim = float(torch.tensor(z).nan_to_num(0).abs().max()) or 1.0
    text = None
    if marks is not None:
        flags = torch.tensor([1.0 if bool(f) else float("nan") for f in marks], dtype=torch.float64)
        star = torch.cat([res.head_grid(values=flags), res.mlp_grid(values=flags)[:, None]], 1)[:top]
        text = [["*" if v == 1 else "" for v in row] for row in star.tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=list(range(top)), colorscale=DIVERGING, zmid=0,
                               zmin=-lim, zmax=lim, colorbar=dict(title="normalised"), text=text,
                               texttemplate="%{text}" if text else None, textfont=dict(size=16),
                               hovertemplate="layer %{y} %{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="sender")
    fig.update_yaxes(title="layer", autorange="reversed")
    return style(fig, title=title or (f"Path patching → {res.receiver} ({res.direction}, {res.metric} "
                                      f"{res.answer!r} vs {res.wrong!r}) — {res.model}"),
                 width=700, height=700)
