"""Activation patching between a clean and a corrupted prompt of equal token length, batched.

Design note
-----------
Denoising (``direction="denoise"``, clean → corrupt, as TransformerLens'
``get_act_patch_*``): the corrupted prompt is run with one activation taken from the clean run;
noising (``"noise"``, corrupt → clean) runs the clean prompt with one corrupted activation.
All cells of all sites are rows of one :class:`~interp.interventions.InterventionPlan`:

* row 0 = clean prompt, row 1 = corrupted prompt (no edits);
* every cell = a copy of the *base* prompt (corrupt for denoise, clean for noise) with a
  ``set`` edit whose value is copied from the *source* row of the same forward
  (``source_row=0`` or ``1``) — no caching pass, no per-cell forward;
* a cell whose positions all lie in the prefix the two prompts share (:func:`shared_prefix`,
  e.g. BOS + "The") copies a value equal to the one already there: it gets the base run's metric
  without a row (``settings["cells_run"]`` counts the rows that ran).

Sites: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` give a
``[layer, pos]`` grid; ``head`` (one head's ``attn_z``, i.e. its contribution before W_O) gives
``[layer, pos, head]``; ``neuron`` (``mlp_post`` units, the list in ``neurons=``) gives
``[layer, pos, neuron]``.  With ``per_position=False`` the unit sites are patched at all
chosen positions at once (TransformerLens' ``*_all_pos``), giving ``[layer, 1, unit]``.

Metrics: ``"logit_diff"`` = logit(answer) − logit(wrong) at the last token (answer defaults to
the clean top-1, wrong to the corrupt top-1), ``"prob"`` = softmax(answer), or any function
``f(last_logits [rows, vocab]) -> [rows]``.  ``values`` holds the metric of every patched row,
``clean_metric`` / ``corrupt_metric`` the two unpatched rows; :meth:`PatchingResult.normalized`
gives (v − base) / (source − base), 1 = the patch restores everything.

Every cell row is *derived* from the base row (``plan.derive``): with ``fast=True`` (the default)
and an engine that can skip work (capability ``skip_work``; the ``hf`` engine on every supported
architecture), each row starts at its patched layer from the base run's cached residual and
computes only positions ≥ the patched one (earlier positions' keys/values come from the base
run; :mod:`interp.skipping`) — the same numbers, several times less work.  Otherwise every row
runs in full.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..arch import UNIT_SITES
from ..errors import InterventionError, PromptError
from ..interventions import Edit, InterventionPlan
from ..shipped import token_logits, token_prob
from ..results import Result

GRID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ALL_SITES = GRID_SITES + tuple(UNIT_SITES)


def metric_fn(model, metric, answer_id: int | None, wrong_id: int | None) -> tuple[Callable, str]:
    """``f(last_logits [rows, vocab]) -> [rows]`` and its name."""
    if callable(metric):
        return metric, getattr(metric, "__name__", "user")
    if metric == "logit_diff":
        if answer_id == wrong_id:
            tok = model.tokenizer.decode([answer_id])
            raise InterventionError(
                f"the answer and the wrong answer are the same token ({tok!r}; by default the clean and the "
                f"corrupted prompt's top-1): their logit difference is 0 in every run, so nothing can be "
                f"measured; give answer= and wrong= (CLI --answer / --wrong), choose a corruption the model "
                f"answers differently, or use metric='prob'")
        return token_logits([answer_id, wrong_id], lambda lg: lg[:, 0].float() - lg[:, 1].float()), "logit_diff"
    if metric == "prob":
        return (lambda lg: token_prob(lg, answer_id)), "prob"
    if metric == "logprob":
        return (lambda lg: lg.float().log_softmax(-1)[:, answer_id]), "logprob"
    raise InterventionError(f"metric must be 'logit_diff', 'prob', 'logprob' or a function of the "
                            f"last-token logits, not {metric!r}")


def _token_or_top(model, text: str | None, top: Tensor, what: str) -> int:
    """First token of ``text``, or the top-1 token ``top`` when no text is given."""
    if text is None:
        return int(top)
    tid, multi = model.encode_target(text)
    if multi:
        warnings.warn(f"{what} {text!r} has several tokens; using its first", stacklevel=4)
    return tid


def pair_positions(positions, n: int) -> list[int]:
    """Prompt-relative positions of a pair of ``n``-token prompts, checked and made non-negative."""
    from ..errors import LayerIndexError
    for p in positions:
        if not -n <= p < n:
            raise LayerIndexError(f"position {p} out of range for prompts of {n} tokens")
    return [p % n for p in positions]


@dataclass
class PairSetup:
    """A resolved clean / corrupted pair: texts, tokens, answer and wrong tokens, context span."""
    clean_text: str
    corrupt_text: str
    tokens: list[str]
    corrupt_tokens: list[str]
    n: int
    answer: str
    answer_id: int
    wrong: str
    wrong_id: int
    context_range: tuple[int, int] | None


def prepare_pair(model, clean: str, corrupt: str, *, answer: str | None = None, wrong: str | None = None,
                 context: str | None = None, template: str | None = None) -> PairSetup:
    """Check the two prompts (equal token length), add the context, resolve the answer tokens."""
    for name, p in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(p, str) or not p.strip():
            raise PromptError(f"the {name} prompt is empty")
    ctx_range = None
    if context is not None:
        from ..prompts import rag_prompt
        clean = rag_prompt(clean, context, template=template).text
        corrupt = rag_prompt(corrupt, context, template=template).text
        ctx_range = model.token_span(clean, context.strip())
    b = model.tokenize([clean, corrupt])
    n0, n1 = b.lengths
    if n0 != n1:
        raise PromptError(
            f"clean and corrupted prompts must have the same number of tokens to patch position by "
            f"position: clean has {n0} ({model.to_str_tokens(clean)}), corrupt has {n1} "
            f"({model.to_str_tokens(corrupt)}); choose a corruption of equal token length (e.g. "
            f"swap the subject for one with the same token count)")
    top = model.run(b, logits=lambda lg: lg.argmax(-1)).logits
    aid = _token_or_top(model, answer, top[0], "answer")
    wid = _token_or_top(model, wrong, top[1], "wrong answer")
    dec = model.tokenizer.decode
    return PairSetup(clean, corrupt, model.to_str_tokens(clean), model.to_str_tokens(corrupt), n0,
                     dec([aid]), aid, dec([wid]), wid, ctx_range)


@dataclass
class PairResult(Result):
    """What every method over a clean / corrupted pair shares (activation, attribution and path
    patching): the pair, the metric and both unpatched runs' values, and which run is patched."""

    clean: str
    corrupt: str
    tokens: list[str]
    direction: str
    metric: str
    answer: str
    wrong: str
    clean_metric: float
    corrupt_metric: float

    @property
    def base_metric(self) -> float:
        """The metric of the run that is patched: corrupt when denoising, clean when noising."""
        return self.corrupt_metric if self.direction == "denoise" else self.clean_metric

    @property
    def source_metric(self) -> float:
        """The metric of the run the patched values come from."""
        return self.clean_metric if self.direction == "denoise" else self.corrupt_metric

    def normalize(self, values: Tensor) -> Tensor:
        """(v − base) / (source − base): 1 = the patch moves the metric all the way to the source run
        (NaN where the two runs do not differ)."""
        d = self.source_metric - self.base_metric
        return (values - self.base_metric) / (d if abs(d) > 1e-12 else float("nan"))


@dataclass
class PairGridResult(PairResult):
    """What activation patching and attribution patching share: a :class:`PairResult` with one grid
    per site over ``layers × positions`` (× unit).

    Subclasses name the field that holds the grids in :attr:`grid_field`; their own fields are
    keyword-only.
    """

    grid_field: ClassVar[str] = "values"

    sites: list[str]
    layers: list[int]
    positions: list[int]
    heads: list[int] = field(default_factory=list)
    neurons: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    model: str = ""

    def grid(self, site: str) -> Float[Tensor, "layer pos *unit"]:
        """The grid of ``site``: [layer, pos] (``head`` / ``neuron``: [layer, pos, unit])."""
        return torch.tensor(getattr(self, self.grid_field)[site], dtype=torch.float32)

    def summary_line(self) -> str:
        """One line: direction, metric, answer vs wrong, both unpatched metrics, sites and grid size."""
        return (f"{type(self).__name__}: {self.direction} {self.metric} ({self.answer!r} vs {self.wrong!r}), "
                f"clean {self.clean_metric:.3f}, corrupt {self.corrupt_metric:.3f}; sites "
                f"{', '.join(self.sites)} over {len(self.layers)} layers × {len(self.positions)} positions")


@dataclass(kw_only=True)
class PatchingResult(PairGridResult):
    """Activation patching grids: ``values[site]`` is [layer][pos] or [layer][pos][unit]."""

    stem = "patching"
    grid_field = "values"

    corrupt_tokens: list[str]
    values: dict
    per_position: bool = True
    context_range: list[int] | None = None

    def effect(self, site: str) -> Float[Tensor, "layer pos *unit"]:
        """Patched metric minus the base run's (corrupt for denoise, clean for noise)."""
        return self.grid(site) - self.base_metric

    def normalized(self, site: str) -> Float[Tensor, "layer pos *unit"]:
        """(v − base) / (source − base): 1 = the patch moves the metric all the way to the source run."""
        return self.normalize(self.grid(site))

    def figure(self):
        """Heatmaps of the normalised patching effect, one panel per site (:func:`patching_figure`)."""
        return patching_figure(self)


def _check(model, sites, layers, positions, n, heads, neurons, direction):
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    bad = [s for s in sites if s not in ALL_SITES]
    if bad or not sites:
        raise InterventionError(f"unknown patching site(s) {bad or sites}; choose from {', '.join(ALL_SITES)}")
    if direction not in ("denoise", "noise"):
        raise InterventionError(f"direction must be 'denoise' (clean → corrupt) or 'noise' "
                                f"(corrupt → clean), not {direction!r}")
    layers = list(range(model.n_layers)) if layers is None else [model.adapter.check_layer(l) % model.n_layers
                                                                 for l in layers]
    positions = list(range(n)) if positions is None else pair_positions(positions, n)
    a = model.adapter
    heads = list(range(a.n_heads)) if heads is None else list(heads)
    if "neuron" in sites and not neurons:
        raise InterventionError("site 'neuron' needs neurons=[...] (indices into d_mlp): patching all "
                                f"{a.d_mlp} neurons × layers × positions is rarely what you want")
    neurons = list(neurons or [])
    return sites, layers, positions, heads, neurons


def shared_prefix(pair) -> int:
    """How many leading positions the two prompts of ``pair`` share (same tokens, no padding).

    In a causal model every activation at position ``t`` depends only on the tokens ``≤ t``, so
    up to there the clean and corrupted runs hold identical activations: a patch whose positions
    all lie in the shared prefix writes the value already there and leaves the base run's metric
    unchanged.  Activation patching fills those cells with the base metric instead of running
    them (with a template that starts both prompts alike, such as BOS + "The", that is the most
    expensive columns of a position sweep)."""
    ids, mask = pair.input_ids, pair.attention_mask
    same = (ids[0] == ids[1]) & mask[0].bool() & mask[1].bool()
    return int(same.long().cumprod(0).sum())


def patch_cells(sites, layers, positions, heads, neurons, per_position):
    """(site, grid index, edits [(site, layer, positions, unit)]) for every cell."""
    cells = []
    for site in sites:
        if site in GRID_SITES:
            for i, l in enumerate(layers):
                for j, p in enumerate(positions):
                    cells.append((site, (i, j), [(site, l, [p], None)]))
        else:
            real = UNIT_SITES[site]
            units = heads if site == "head" else neurons
            pos_sets = [[p] for p in positions] if per_position else [list(positions)]
            for i, l in enumerate(layers):
                for j, ps in enumerate(pos_sets):
                    for k, u in enumerate(units):
                        cells.append((site, (i, j, k), [(real, l, ps, u)]))
    return cells


def activation_patching(model, clean: str, corrupt: str, *, sites: Sequence[str] | str = ("resid_pre",),
                        layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                        direction: str = "denoise", metric: str | Callable = "logit_diff",
                        answer: str | None = None, wrong: str | None = None,
                        heads: Sequence[int] | None = None, neurons: Sequence[int] | None = None,
                        per_position: bool = True, context: str | None = None, template: str | None = None,
                        fast: bool = True, max_rows: int | None = None, progress: bool = False
                        ) -> PatchingResult:
    """Activation patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024), batched.

    Args:
        clean, corrupt: prompts of the same token length (else :class:`PromptError`).
        sites: any of ``resid_pre resid_mid resid_post attn_out mlp_out head neuron``.
        layers, positions: the grid (default: every layer, every position; prompt-relative).
        direction: ``"denoise"`` (clean activations into the corrupted run) or ``"noise"``.
        metric: ``"logit_diff"`` (answer − wrong), ``"prob"`` / ``"logprob"`` (answer) or
            ``f(last_logits [rows, vocab]) -> Float[Tensor, "rows"]``.
        heads / neurons: units for the ``head`` / ``neuron`` sites.
        context: a retrieved context placed before both prompts (:mod:`.rag`).
        fast: let an engine that can skip work start each patched row at its patched layer and
            position (the same numbers; ``settings["path"]`` records which path ran).
    Returns:
        :class:`PatchingResult`; ``values[site]`` has shape [layer, pos] (``head``/``neuron``:
        [layer, pos, unit]).
    """
    setup = prepare_pair(model, clean, corrupt, answer=answer, wrong=wrong, context=context, template=template)
    sites, layers, positions, heads, neurons = _check(model, sites, layers, positions, setup.n, heads,
                                                      neurons, direction)
    fn, mname = metric_fn(model, metric, setup.answer_id, setup.wrong_id)
    cells = patch_cells(sites, layers, positions, heads, neurons, per_position)
    base_row, src_row = (1, 0) if direction == "denoise" else (0, 1)
    pair = model.tokenize([setup.clean_text, setup.corrupt_text])
    shared = shared_prefix(pair)
    run = [c for c in cells if max((p for e in c[2] for p in e[2]), default=-1) >= shared]  # else: a no-op
    plan = InterventionPlan(pair.select([0, 1] + [base_row] * len(run)))
    for r, (_, _, edits) in enumerate(run, start=2):
        plan.derive(r, base_row)
        for site, l, ps, u in edits:
            plan.edits.append(Edit(site, l, r, ps, "set", None, src_row, u))
    out = model.run(plan=plan, logits=fn, max_rows=max_rows, skip=fast, progress=progress)
    v = out.logits.float().cpu()
    m_clean, m_corrupt = float(v[0]), float(v[1])
    ran = dict(zip((id(c) for c in run), v[2:].tolist()))
    base = float(v[base_row])
    # assemble grids
    shapes = {}
    for site in sites:
        if site in GRID_SITES:
            shapes[site] = (len(layers), len(positions))
        else:
            nu = len(heads) if site == "head" else len(neurons)
            shapes[site] = (len(layers), len(positions) if per_position else 1, nu)
    grids = {s: torch.full(shapes[s], float("nan")) for s in sites}
    for c in cells:
        grids[c[0]][c[1]] = ran.get(id(c), base)
    values = {s: g.tolist() for s, g in grids.items()}
    return PatchingResult(
        clean=setup.clean_text, corrupt=setup.corrupt_text, tokens=setup.tokens, corrupt_tokens=setup.corrupt_tokens,
        direction=direction, metric=mname, answer=setup.answer, wrong=setup.wrong, clean_metric=m_clean,
        corrupt_metric=m_corrupt, sites=list(sites), layers=layers, positions=positions, values=values,
        heads=heads if "head" in sites else [], neurons=neurons, per_position=per_position,
        context_range=list(setup.context_range) if setup.context_range else None,
        settings={"path": out.extra.get("path", "plan"), "engine": model.engine_name,
                  "shared_prefix": shared, "cells_run": len(run), "cells": len(cells),
                  "head_site": "attn_z (per-head z before W_O)", "neuron_site": "mlp_post"},
        model=model.name)


def patching_figure(res: PatchingResult):
    """Heatmaps of the normalised patching effect: one panel per site (units: mean over positions)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import DIVERGING, style

    fig = make_subplots(rows=1, cols=len(res.sites), horizontal_spacing=0.08,
                        subplot_titles=[f"{s}" for s in res.sites])
    for i, s in enumerate(res.sites):
        z = res.normalized(s)
        if z.dim() == 3:  # layer pos unit -> layer unit (mean over positions)
            z = z.mean(1)
            x = [f"{'H' if s == 'head' else 'N'}{u}" for u in (res.heads if s == "head" else res.neurons)]
        else:
            x = [f"{p}:{res.tokens[p]!r}"[:16] for p in res.positions]
        fig.add_trace(go.Heatmap(z=z.numpy(), x=x, y=res.layers, colorscale=DIVERGING, zmid=0,
                                 colorbar=dict(title="normalised" if i == 0 else "", x=1.0 + 0.06 * i, len=0.8),
                                 hovertemplate="layer %{y}, %{x}<br>%{z:.3f}<extra>" + s + "</extra>"),
                      1, i + 1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    return style(fig, title=(f"Activation patching ({res.direction}, {res.metric}: {res.answer!r} vs "
                             f"{res.wrong!r}) — {res.model}"), width=420 * len(res.sites) + 250, height=560)
