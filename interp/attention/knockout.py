"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations").

**What is blocked.**  For a *target* position ``t`` (the last token by default) and a set of
*source* positions ``S``, the edge ``t → s`` is cut for every ``s ∈ S`` in every layer of a
window: the pre-softmax score ``[t, s]`` is set to the dtype's most negative value, so the
softmax renormalises over the keys that remain (the core's ``InterventionPlan.block``; all heads
unless ``heads=`` names some).  A set that covers every key the target can see (``0..t``) is
refused: the softmax would have nothing to attend to, and "near-uniform over nothing" is what
Geva's notebook quirk returns, not a knockout.

**Windows.**  The sweep over layers puts a window of ``k`` consecutive layers around each centre
layer ``ℓ`` with :func:`interp.windows.window_layers` — by default Geva et al.'s code, which is
ROME's formula: ``range(ℓ − k//2, ℓ + ceil(k/2))`` clipped to the model (so for an even ``k`` one
more layer before the centre than after; windows at the ends are shorter), the same layers
``interp trace`` restores; ``convention="rome_paper"`` is the other placement.  The default
``k`` (:func:`interp.windows.default_window`) is the odd number nearest to ``n_layers / 5``
(ties go up): 9 for 48-layer GPT-2 XL (Geva's setting), 7 for the 30-layer default model,
1 for a 3-layer tiny model.  An odd ``k`` makes the window centred under both conventions.

**Source sets** (:func:`source_positions`): ``subject`` (the subject's tokens), ``non_subject``
(positions before the target outside the subject), ``last`` (the target itself), ``context``
(a retrieved passage's tokens, for the RAG condition), ``non_context`` (before the target,
outside the context), or explicit prompt-relative positions.

**Batching.**  Every (source set, centre layer) is one row of a single
:class:`~interp.interventions.InterventionPlan`, plus one clean row: all layers × sets run as one
chunked forward, never one forward per layer (``benchmarks/bench_attention.py`` measures both).

**Metric.**  Probability of the clean top-1 token (or a given ``answer``) after the knockout
and its relative change ``(p_knock − p_clean) / p_clean`` (Geva report it × 100); optionally the
answer's rank.

**Eager attention.**  Blocking edits the scores an *eager* attention adds the mask to; sdpa and
flash kernels would ignore or bypass the edit.  :func:`ensure_eager` switches a non-eager model
to eager (with a warning) or, with ``switch=False``, refuses with :class:`~interp.errors.EngineError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..capabilities import SWITCH_ATTENTION
from ..errors import (EngineError, InterventionError, InterpWarning, LayerIndexError,
                      PositionZeroWarning, SpanNotFoundError, UnknownTargetWarning)
from ..interventions import InterventionPlan
from ..known import MIN_P_CLEAN
from ..remote import ships_with_requests
from ..results import Result
from ..shipped import token_prob
from ..windows import DEFAULT_CONVENTION, check_convention, check_window, window_layers

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)

NAMED_SETS = ("subject", "non_subject", "last", "context", "non_context")
DEFAULT_SETS = ("subject", "non_subject", "last")


# ----------------------------------------------------------------------------- checks
def attn_implementation(model) -> str:
    """The attention kernel the Hugging Face model is configured with (``eager``, ``sdpa`` …)."""
    cfg = model.hf.config
    return getattr(cfg, "_attn_implementation", None) or getattr(cfg, "attn_implementation", None) or "eager"


def ensure_eager(model, *, switch: bool = True) -> None:
    """Make sure attention edits reach the scores: switch the model to eager, or refuse.

    sdpa / flash attention never materialise the score matrix the knockout edits, so a knockout
    there would silently return unedited numbers.
    """
    impl = attn_implementation(model)
    if impl == "eager":
        return
    if not switch:
        raise EngineError(
            f"the model uses {impl!r} attention, whose scores cannot be edited, so a knockout would "
            f"return unedited numbers; load it with attn_implementation='eager' (interp.load does) "
            f"or call ensure_eager(model) to switch it")
    if not model.supports(SWITCH_ATTENTION):
        raise EngineError(
            f"the model uses {impl!r} attention and engine {model.engine_name!r} cannot switch it "
            f"after loading; load the model with attn_implementation='eager' (interp.load does)")
    try:
        if hasattr(model.hf, "set_attn_implementation"):
            model.hf.set_attn_implementation("eager")
        else:
            model.hf.config._attn_implementation = "eager"
    except Exception as e:  # noqa: BLE001 - any failure means we cannot guarantee edits land
        raise EngineError(f"could not switch {impl!r} attention to eager ({type(e).__name__}: {e}); "
                          f"reload the model with attn_implementation='eager'") from None
    if attn_implementation(model) != "eager":
        raise EngineError(f"the model still reports {attn_implementation(model)!r} attention after "
                          f"switching; reload it with attn_implementation='eager'")
    warnings.warn(f"attention knockout: switched the model from {impl!r} to eager attention "
                  f"(sdpa/flash kernels cannot be edited)", stacklevel=3)


def check_target(target: int, n_tokens: int) -> int:
    """Prompt-relative target → non-negative index, with a specific error."""
    if not isinstance(target, int) or isinstance(target, bool) or not -n_tokens <= target < n_tokens:
        raise LayerIndexError(
            f"target position {target!r} out of range: the prompt has {n_tokens} tokens "
            f"(valid: 0..{n_tokens - 1}, or negative from the end, e.g. -1 for the last token)")
    return target % n_tokens


def _span(model, prompt: str, text: str | None, what: str, occurrence: int = 0) -> tuple[int, int] | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise SpanNotFoundError(f"the {what} is empty: give the {what}'s text as it occurs in the prompt")
    try:
        return model.token_span(prompt, text, occurrence)
    except SpanNotFoundError as e:
        raise SpanNotFoundError(f"{what} {text!r} not found in the prompt: {e}") from None


def source_positions(model, prompt: str, sources: Iterable, *, target: int = -1,
                     subject: str | None = None, context: str | None = None,
                     subject_occurrence: int = 0, skip: int = 0
                     ) -> tuple[int, dict[str, list[int]], tuple | None, tuple | None]:
    """Resolve source sets to prompt-relative positions.

    Args:
        sources: names from :data:`NAMED_SETS`, or ``(name, positions)`` pairs / a dict
            ``{name: positions}`` of explicit prompt-relative positions, or one list of ints.
        skip: leading positions that are no part of any named set (a prepended BOS / sink
            prefix: ``non_subject`` / ``non_context`` start after it).
    Returns:
        ``(target, {name: positions}, subject_range, context_range)`` with a non-negative target.
    """
    n = model.tokenize(prompt).lengths[0]
    t = check_target(target, n)
    subj = _span(model, prompt, subject, "subject", subject_occurrence)
    ctx = _span(model, prompt, context, "context")
    if isinstance(sources, str):
        sources = [s.strip() for s in sources.split(",") if s.strip()]
    if isinstance(sources, dict):
        items = list(sources.items())
    else:
        sources = list(sources)
        if sources and all(isinstance(s, int) and not isinstance(s, bool) for s in sources):
            items = [("positions", sources)]
        elif not sources:
            items = [("empty", [])]
        else:
            items = [(s, None) if isinstance(s, str) else tuple(s) for s in sources]
    out: dict[str, list[int]] = {}
    for name, pos in items:
        if pos is None:
            if name not in NAMED_SETS:
                raise InterventionError(f"unknown source set {name!r}; named sets: "
                                        f"{', '.join(NAMED_SETS)} (or give explicit positions)")
            if name in ("subject", "non_subject") and subj is None:
                raise SpanNotFoundError(f"source set {name!r} needs subject=: the subject's text in the prompt")
            if name in ("context", "non_context") and ctx is None:
                raise SpanNotFoundError(f"source set {name!r} needs context=: the retrieved passage's "
                                        f"text in the prompt")
            if name == "subject":
                pos = [p for p in range(*subj) if p <= t]
                if not pos:
                    raise SpanNotFoundError(f"subject {subject!r} (tokens {subj[0]}..{subj[1] - 1}) lies "
                                            f"after the target position {t}: the target cannot see it")
            elif name == "non_subject":
                pos = [p for p in range(skip, t) if not subj[0] <= p < subj[1]]
            elif name == "last":
                pos = [t]
            elif name == "context":
                pos = [p for p in range(*ctx) if p <= t]
                if not pos:
                    raise SpanNotFoundError(f"context (tokens {ctx[0]}..{ctx[1] - 1}) lies after the "
                                            f"target position {t}: the target cannot see it")
            else:
                pos = [p for p in range(skip, t) if not ctx[0] <= p < ctx[1]]
        else:
            pos = list(pos.tolist() if isinstance(pos, Tensor) else pos)
            norm = []
            for p in pos:
                if not isinstance(p, int) or not -n <= p < n:
                    raise LayerIndexError(f"source position {p!r} of set {name!r} out of range for a "
                                          f"prompt of {n} tokens (valid: 0..{n - 1} or negative)")
                p %= n
                if p > t:
                    raise InterventionError(
                        f"source position {p} of set {name!r} comes after the target position {t}: "
                        f"the target never attends to later tokens, so there is no edge to block")
                norm.append(p)
            pos = sorted(set(norm))
        if set(range(t + 1)) <= set(pos):
            raise InterventionError(
                f"source set {name!r} covers every position the target (position {t}) can attend "
                f"to (0..{t}): blocking them all would leave its softmax with nothing to attend to; "
                f"leave at least one position out (e.g. the target itself — 'non_subject' excludes "
                f"it — or the first token)")
        out[str(name)] = pos
    return t, out, subj, ctx


# ----------------------------------------------------------------------------- core
def build_plan(model, prompt: str, target: int, row_keys: Sequence[Sequence[int]],
               row_layers: Sequence[Sequence[int]], heads: Sequence[int] | None = None
               ) -> InterventionPlan:
    """A plan of ``len(row_keys)`` copies of ``prompt``; row r blocks target → row_keys[r] in row_layers[r].

    The prompt ends at the target: the positions after it change nothing at the target (causal
    attention), so they are never computed and the target's logits are the last ones.
    """
    base = model.tokenize(prompt).head(target + 1)
    plan = InterventionPlan(base.select([0] * len(row_keys)))
    clean = next((r for r, keys in enumerate(row_keys) if not keys), None)
    for r, (keys, layers) in enumerate(zip(row_keys, row_layers)):
        if not keys:
            continue
        if clean is not None:
            plan.derive(r, clean)   # an engine that skips work starts the row at its window
        for l in layers:
            if heads is None:
                plan.block(l, r, [target], keys)
            else:
                for h in heads:
                    plan.block(l, r, [target], keys, head=h)
    return plan


def knockout_logits(model, prompt: str, row_keys: Sequence[Sequence[int]],
                    row_layers: Sequence[Sequence[int]], *, target: int = -1,
                    heads: Sequence[int] | None = None, max_rows: int | None = None,
                    reduce: Callable | None = None) -> Float[Tensor, "row vocab"]:
    """Logits at ``target`` for each row's knockout, all rows in one chunked forward.

    Row ``r`` blocks the edges ``target → row_keys[r]`` (all heads, or ``heads``) in the layers
    ``row_layers[r]``; a row with no keys is the clean run.  ``reduce``: a function of the
    target's logits ``[rows, vocab]`` applied per chunk where the model runs (``logits=fn`` of
    :meth:`~interp.model.Model.run`); its result is returned instead of the logits.
    """
    ensure_eager(model)
    n = model.tokenize(prompt).lengths[0]
    t = check_target(target, n)
    if heads is not None:
        heads = [int(h) for h in heads]
        for h in heads:
            if not 0 <= h < model.adapter.n_heads:
                raise LayerIndexError(f"head {h} out of range 0..{model.adapter.n_heads - 1}")
    for layers in row_layers:
        for l in layers:
            model.adapter.check_layer(l)
    plan = build_plan(model, prompt, t, row_keys, row_layers, heads)
    out = model.run(plan=plan, logits=reduce or "last", max_rows=max_rows).logits
    return out if reduce is not None else out.float()


@dataclass
class KnockoutResult(Result):
    """Knockout sweep of one prompt: ``p_knockout[set][i]`` for the window centred on ``layers[i]``.

    ``prompt`` / ``tokens`` are the text actually run (with the ``bos`` prefix, if any);
    ``position_zero`` names the sets that hold position 0 while it is a content token (no BOS: the
    attention sink is blocked with them); ``unknown_target`` says why the tracked answer is not
    one the model predicts, or is None.
    """

    stem = "knockout"

    prompt: str
    tokens: list[str]
    target: int
    subject_range: list[int] | None
    context_range: list[int] | None
    window: int
    layers: list[int]
    windows: list[list[int]]
    heads: list[int] | None
    answer: str
    answer_id: int
    p_clean: float
    rank_clean: int
    sources: dict[str, list[int]]
    p_knockout: dict[str, list[float]]
    relative_change: dict[str, list[float]]
    rank_knockout: dict[str, list[int]] = field(default_factory=dict)
    model: str = ""
    engine: str = ""
    window_convention: str = DEFAULT_CONVENTION
    bos: str = ""
    position_zero: list[str] = field(default_factory=list)
    unknown_target: str | None = None

    def strongest_drops(self) -> dict[str, tuple[int, float]]:
        """``{set: (centre layer, relative change)}`` where each set's knockout lowers p(answer) most.

        The relative change is a fraction of ``p_clean`` (−0.43: the answer's probability falls by
        43 %); print it as ``100 * x`` with a ``%``.
        """
        out = {}
        for s, rel in self.relative_change.items():
            if rel:
                i = min(range(len(rel)), key=rel.__getitem__)
                out[s] = (self.layers[i], rel[i])
        return out

    def summary_line(self) -> str:
        """One line: p_clean, window, the strongest drop per set and the position-0 flag."""
        drops = ", ".join(f"{s} {100 * r:+.1f}%" for s, (_, r) in self.strongest_drops().items())
        flag = f"; position 0 (sink) in {', '.join(self.position_zero)}" if self.position_zero else ""
        return (f"KnockoutResult({self.model}: p_clean({self.answer!r})={self.p_clean:.3f}, {self.window}-layer "
                f"windows; strongest drops {drops}{flag})")

    def figure(self):
        """One line per source set over the centre layer (Geva et al. 2023, Fig. 2)."""
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        for name, rel in self.relative_change.items():
            sink = " — holds position 0, the sink" if name in self.position_zero else ""
            fig.add_trace(go.Scatter(x=self.layers, y=[100 * v for v in rel], mode="lines+markers",
                                     name=f"{name} → target ({len(self.sources[name])} tok){sink}"))
        fig.add_hline(y=0, line=dict(color="#888", width=1))
        fig.update_xaxes(title=f"centre layer of a {self.window}-layer window")
        fig.update_yaxes(title=f"% change of p({self.answer!r})")
        pre = f" · prefix {self.bos!r}" if self.bos else (" · no BOS" if self.position_zero else "")
        return style(fig, title=f"Attention knockout — {self.model} · p_clean={self.p_clean:.3f}{pre}")


def attention_knockout(model, prompt: str, sources: Iterable = DEFAULT_SETS, *, target: int = -1,
                       window: int | None = None, layers: Sequence[int] | None = None,
                       heads: Sequence[int] | None = None, subject: str | None = None,
                       context: str | None = None, answer: str | None = None,
                       subject_occurrence: int = 0, window_convention: str = DEFAULT_CONVENTION,
                       bos: bool | str | None = None, min_p_clean: float | None = MIN_P_CLEAN,
                       max_rows: int | None = None) -> KnockoutResult:
    """Block target → source edges in a window of layers around each layer (Geva et al. 2023).

    Args:
        sources: named sets (``subject``, ``non_subject``, ``last``, ``context``,
            ``non_context``), ``{name: positions}``, or one list of prompt-relative positions.
        target: prompt-relative query position whose edges are cut (default the last token).
        window: layers per window (default :func:`~interp.windows.default_window`: odd,
            ≈ n_layers / 5).
        window_convention: ``"rome_code"`` (Geva et al.'s and ROME's code, default) or
            ``"rome_paper"`` (see :mod:`interp.windows`); ``windows`` in the result lists the
            layers of every window.
        layers: centre layers to sweep (default all).
        heads: block only these heads (default all heads).
        subject / context: text of the subject / retrieved passage in the prompt.
        answer: token to track (default: the clean top-1 prediction, as Geva).
        bos: prepend the tokenizer's BOS (True) or this token text (:func:`interp.prompts.bos_prefix`),
            so that position 0 — the attention sink — is not a prompt token; named sets leave
            the prefix (and any leading special token) out; explicit positions and ``target``
            index the prefixed text.  Without
            it, a set holding position 0 of a prompt whose first token is a content token is
            flagged (``position_zero``, :class:`~interp.errors.PositionZeroWarning`): Geva et al.'s
            notebook flags the same case (``is_subject_position_zero``).  The prompt changes, so
            p_clean changes too (the result records both the prefix and p_clean).
        min_p_clean: warn (:class:`~interp.errors.UnknownTargetWarning`) when the answer is not
            the clean top-1 or p_clean is below this (None: only the top-1 condition).
    Returns:
        :class:`KnockoutResult`; all ``len(sets) × len(layers)`` knockouts plus the clean row run
        as rows of one chunked forward.
    """
    from ..known import check_target
    from ..prompts import bos_prefix, sink_is_content
    a = model.adapter
    window = check_window(window, a.n_layers)
    check_convention(window_convention)
    prefix = bos_prefix(model.tokenizer, bos)
    text = prefix + prompt
    batch = model.tokenize(text)
    ids, offsets = batch.token_ids(0), batch.offsets[0]
    skip = 0  # leading special tokens and prefix tokens: no part of a named set
    while skip < len(ids) - 1 and (not sink_is_content(model.tokenizer, ids[skip])
                                   or (prefix and offsets[skip][1] <= len(prefix))):
        skip += 1
    t, sets, subj, ctx = source_positions(model, text, sources, target=target, subject=subject,
                                          context=context, subject_occurrence=subject_occurrence, skip=skip)
    centres = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    wins = [window_layers(c, window, a.n_layers, window_convention) for c in centres]
    row_keys: list[list[int]] = [[]]
    row_layers: list[list[int]] = [[]]
    for name, pos in sets.items():
        for w in wins:
            row_keys.append(pos)
            row_layers.append(w)
    if answer is None:  # the clean top-1 at the target
        aid = int(model.run(model.tokenize(text).head(t + 1), logits=lambda lg: lg.argmax(-1)).logits[0])
    else:
        aid, _ = model.encode_target(answer)
    # only p(answer) and its rank per row come back from the forward
    stats = knockout_logits(model, text, row_keys, row_layers, target=t, heads=heads, max_rows=max_rows,
                            reduce=lambda lg: answer_stats(lg, aid))
    probs, ranks = stats[:, 0], stats[:, 1].long()
    p0 = float(probs[0])
    pk, rel, rk = {}, {}, {}
    for i, name in enumerate(sets):
        sl = slice(1 + i * len(centres), 1 + (i + 1) * len(centres))
        pk[name] = probs[sl].tolist()
        rel[name] = [(p - p0) / p0 if p0 > 0 else float("nan") for p in pk[name]]
        rk[name] = ranks[sl].tolist()
    tokens = model.to_str_tokens(text)
    zero = [name for name, pos in sets.items() if 0 in pos] if sink_is_content(model.tokenizer, ids[0]) else []
    if zero:
        warnings.warn(
            f"attention_knockout: source set(s) {', '.join(repr(z) for z in zero)} hold position 0 "
            f"({tokens[0]!r}), a prompt token: with no BOS it is the attention sink, and blocking it "
            f"inflates the effect; prepend a BOS (bos=True / --bos) or a chosen token "
            f"(bos='<|endoftext|>')", PositionZeroWarning, stacklevel=2)
    answer_text = model.tokenizer.decode([aid])
    why = check_target(answer_text, p0, int(ranks[0]) == 0, min_p_clean=min_p_clean,
                       method="attention_knockout")
    return KnockoutResult(
        prompt=text, tokens=tokens, target=t,
        subject_range=list(subj) if subj else None, context_range=list(ctx) if ctx else None,
        window=window, layers=centres, windows=wins, heads=None if heads is None else list(heads),
        answer=answer_text, answer_id=aid, p_clean=p0, rank_clean=int(ranks[0]),
        sources=sets, p_knockout=pk, relative_change=rel, rank_knockout=rk, model=model.name,
        engine=model.engine_name, window_convention=window_convention, bos=prefix,
        position_zero=zero, unknown_target=why)


def answer_stats(logits: Float[Tensor, "row vocab"], answer_id: int) -> Float[Tensor, "row 2"]:
    """Per row: the probability of ``answer_id`` and its rank (0 = top-1), as float64 columns."""
    lg = logits.float()
    p = token_prob(lg, answer_id)
    rank = (lg > lg[:, answer_id:answer_id + 1]).sum(-1)
    return torch.stack([p.double(), rank.double()], -1)


# ----------------------------------------------------------------------------- dataset sweep
@dataclass
class KnockoutSweepResult(Result):
    """Mean ± standard error of the relative change per source set per centre layer over facts."""

    stem = "knockout_sweep"

    dataset: str
    layers: list[int]
    window: int
    sources: list[str]
    n_known: int
    n_scanned: int
    fact_rows: list[int]
    mean: dict[str, list[float]]
    sem: dict[str, list[float]]
    mean_p_clean: float
    frac_below_half: dict[str, list[float]] = field(default_factory=dict)
    model: str = ""
    #: errors inside the sweep: [{"row", "fact", "error"}] (those facts are left out, not "unknown")
    errors: list = field(default_factory=list)
    #: the prefix put before every prompt (``bos=``), "" for none
    bos: str = ""
    #: swept facts with a source set holding position 0 while it is a prompt token (no BOS: the sink)
    n_position_zero: int = 0
    #: swept facts whose tracked answer is not the clean top-1 or has p_clean < ``min_p_clean``
    n_unknown_target: int = 0
    min_p_clean: float | None = None
    #: per-cell statistics over facts (:func:`interp.stats.cell_stats`): source -> {ci_low, ci_high,
    #: p, p_adj} per centre layer, and "settings" (test, correction over sources × layers, alpha)
    stats: dict = field(default_factory=dict)

    def summary_line(self) -> str:
        """One line: facts, window, the strongest mean drop per set, the flagged counts."""
        drops = ", ".join(f"{s} {100 * min(self.mean[s]):+.1f}%" for s in self.sources if self.mean.get(s))
        return (f"KnockoutSweepResult({self.model}: {self.n_known} known facts of {self.n_scanned} scanned, "
                f"{self.window}-layer windows; strongest mean drops {drops}; position 0 blocked in "
                f"{self.n_position_zero}, unknown target in {self.n_unknown_target})")

    def significant(self, source: str, alpha: float | None = None) -> list[bool]:
        """Per centre layer: is the mean relative change different from 0 after the correction?"""
        from ..stats import significant_cells

        return significant_cells(self.stats, (source,), len(self.layers), alpha)

    def figure(self, mask_nonsignificant: bool = False):
        """Mean relative change per centre layer with its bootstrap 95% CI (s.e. for results saved
        without statistics); significant layers are filled markers, the others hollow — or hidden
        with ``mask_nonsignificant``."""
        import plotly.graph_objects as go

        from ..figures import COLORS, style
        fig = go.Figure()
        for i, name in enumerate(self.sources):
            m = [100 * v for v in self.mean[name]]
            st = self.stats.get(name)
            if st:
                err = dict(type="data", symmetric=False, array=[100 * (h - v) for h, v in zip(st["ci_high"], self.mean[name])],
                           arrayminus=[100 * (v - lo) for lo, v in zip(st["ci_low"], self.mean[name])])
                sig = self.significant(name)
            else:
                err = dict(type="data", array=[100 * v for v in self.sem[name]])
                sig = [True] * len(m)
            if mask_nonsignificant:
                m = [v if ok else None for v, ok in zip(m, sig)]
            c = COLORS[i % len(COLORS)]
            fig.add_trace(go.Scatter(x=self.layers, y=m, mode="lines+markers", name=f"{name} → last",
                                     line=dict(color=c), error_y=dict(**err, visible=True, color=c),
                                     marker=dict(symbol=["circle" if ok else "circle-open" for ok in sig], size=8)))
        fig.add_hline(y=0, line=dict(color="#888", width=1))
        fig.update_xaxes(title=f"centre layer of a {self.window}-layer window")
        band = "bootstrap 95% CI" if self.stats else "s.e."
        fig.update_yaxes(title=f"% change of p(clean top-1), mean ± {band}")
        flag = (f" · prefix {self.bos!r}" if self.bos else "") + (
            f" · position 0 (the sink) blocked in {self.n_position_zero}/{self.n_known} facts"
            if self.n_position_zero else "")
        shown = "shown" if mask_nonsignificant else "filled"
        note = (f"<br><sub>{shown}: p_adj < {self.stats['settings']['alpha']} (sign-flip test, "
                f"{self.stats['settings']['correction']} over sources × layers)</sub>") if self.stats else ""
        return style(fig, title=f"Attention knockout over {self.n_known} known facts — {self.model}{flag}{note}")


def knockout_sweep(model, dataset: str | Path | Sequence, out_dir: str | Path, *,
                   sources: Sequence[str] = DEFAULT_SETS, window: int | None = None,
                   n_facts: int | None = 40, max_scan: int | None = None, scan_batch: int = 32,
                   require_known: bool = True, bos: bool | str | None = None,
                   window_convention: str = DEFAULT_CONVENTION, min_p_clean: float | None = MIN_P_CLEAN,
                   progress: bool = True) -> KnockoutSweepResult:
    """Knockout sweep over the facts a model knows (Geva et al. 2023, Fig. 3); mean relative change
    ± s.e. per set per layer.

    A fact is *known* under :mod:`interp.known`'s ``"first_token"`` rule (the model's clean top-1
    next token is the first token of ``" " + attribute``); the tracked token is that prediction
    (Geva et al.).  Facts are scanned
    in dataset order (clean forwards batched ``scan_batch`` at a time) until ``n_facts`` known
    ones were swept.  Every fact's outcome (also "not known") is written to
    ``out_dir/items.jsonl`` through :class:`~interp.sweep.Checkpoint`, so a killed sweep resumes.
    A fact whose forward or knockout fails is not "unknown": it is listed in ``errors`` (row,
    fact, error) and on stderr, and the sweep goes on.

    Args:
        dataset: a known_1000-style file path, or a list of :class:`~interp.datasets.Fact`.
        n_facts: stop after this many known facts (None: all).
        max_scan: scan at most this many facts.
        require_known: False sweeps every fact (tracking the clean top-1 whatever it is).
        bos: a prefix before every prompt (see :func:`attention_knockout`); the known check runs
            on the prefixed prompts too.
        min_p_clean: facts whose p_clean is below it (or whose answer is not the top-1) are
            counted in ``n_unknown_target`` (one warning at the end, not one per fact); facts
            with position 0 in a blocked set are counted in ``n_position_zero``.
    """
    from dataclasses import replace

    from ..datasets import dataset_label, load_known_facts
    from ..known import check_known
    from ..prompts import bos_prefix
    from ..sweep import Checkpoint, SweepErrors, describe_fact, map_batches

    a = model.adapter
    window = check_window(window, a.n_layers)
    check_convention(window_convention)
    prefix = bos_prefix(model.tokenizer, bos)
    for s in sources:
        if s not in ("subject", "non_subject", "last"):
            raise InterventionError(f"dataset sweeps use the sets subject, non_subject, last; not {s!r}")
    if isinstance(dataset, (str, Path)):
        facts, _ = load_known_facts(dataset)
        name = dataset_label(dataset)
    else:
        facts, name = list(dataset), "facts"
    if max_scan is not None:
        facts = facts[:max_scan]
    ck = Checkpoint(out_dir, {"method": "attention_knockout", "model": model.name, "window": window,
                              "sources": list(sources), "dataset": Path(name).name,
                              "metric": "relative change of p(clean top-1)",
                              "require_known": require_known, "bos": prefix,
                              "window_convention": window_convention})
    errors = SweepErrors("knockout sweep")

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_facts, desc="knockout facts", unit="fact")
    n_known = 0
    i = 0
    while i < len(facts) and (n_facts is None or n_known < n_facts):
        block = facts[i:i + scan_batch]
        i += scan_batch
        todo = [f for f in block if not ck.finished(f.row)]  # old error records: retried
        checks = dict(zip([f.row for f in todo], map_batches(
            lambda b: check_known(model, [replace(f, prompt=prefix + f.prompt) for f in b], rule="first_token",
                                  batch_size=len(b)), todo, scan_batch, errors,
            describe_fact)))
        for f in block:
            if n_facts is not None and n_known >= n_facts:
                break
            if ck.finished(f.row):
                n_known += bool(ck.get(f.row).get("known"))
                if bar is not None and ck.get(f.row).get("known"):
                    bar.update(1)
                continue
            c = checks[f.row]
            if c is None:  # the clean forward failed: listed in errors
                continue
            if require_known and not c.known:
                ck.add(f.row, {"known": False, "top": c.top_id, "want": c.answer_id})
                continue
            try:
                with warnings.catch_warnings():  # counted below, warned about once at the end
                    warnings.simplefilter("ignore", InterpWarning)
                    r = attention_knockout(model, f.prompt, sources, subject=f.subject, window=window,
                                           answer=None, bos=bos, window_convention=window_convention,
                                           min_p_clean=min_p_clean)
            except Exception as e:  # noqa: BLE001 — a failure is not "unknown": list it, go on
                errors.add(*describe_fact(f), e)
                continue
            ck.add(f.row, {"known": True, "p_clean": r.p_clean, "rel": r.relative_change,
                           "answer": r.answer, "position_zero": r.position_zero,
                           "unknown_target": r.unknown_target})
            n_known += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    res = summarise_sweep(ck.done, name, list(range(a.n_layers)), window, list(sources), model.name,
                          errors.by_row(), bos=prefix, min_p_clean=min_p_clean)
    if res.n_position_zero:
        warnings.warn(f"knockout_sweep: in {res.n_position_zero} of {res.n_known} facts a blocked set holds "
                      f"position 0, a prompt token (no BOS: the attention sink); pass bos=True (--bos) or a "
                      f"chosen token", PositionZeroWarning, stacklevel=2)
    if res.n_unknown_target:
        warnings.warn(f"knockout_sweep: {res.n_unknown_target} of {res.n_known} facts track an answer with "
                      f"p_clean < {min_p_clean} or that is not the top-1", UnknownTargetWarning, stacklevel=2)
    return res


def summarise_sweep(results: dict, dataset: str, layers, window, sources, model_name,
                    errors: list | None = None, *, bos: str = "",
                    min_p_clean: float | None = MIN_P_CLEAN, **stats_kw) -> KnockoutSweepResult:
    """Mean ± s.e., bootstrap CI and corrected p per set per layer over the known facts of a sweep
    log (``results``: id → logged record, every scanned fact), and the flagged counts.
    ``stats_kw`` go to :func:`interp.stats.cell_stats` (``alpha``, ``correction``, ``n_boot`` ...)."""
    from ..known import unknown_target
    rows, recs = [], []
    for k, v in results.items():
        if v.get("known") and "error" not in v:
            rows.append(int(k))
            recs.append(v)
    mean, sem, below, stats = {}, {}, {}, {}
    nan = [float("nan")] * len(layers)
    x = torch.tensor([[r["rel"][s] for s in sources] for r in recs], dtype=torch.float64
                     ).reshape(len(recs), len(sources), len(layers))  # fact source layer
    st = None
    if len(recs):
        from ..stats import cell_stats
        st = cell_stats(x, **stats_kw)
        stats["settings"] = st.settings
    for i, s in enumerate(sources):
        mean[s] = st.mean[i].tolist() if st is not None else nan
        sem[s] = st.se[i].tolist() if len(recs) > 1 else nan
        below[s] = (x[:, i] < -0.5).double().mean(0).tolist() if len(recs) else nan
        if st is not None:
            stats[s] = {f: getattr(st, f)[i].tolist() for f in ("ci_low", "ci_high", "p", "p_adj")}
    pc = sum(r["p_clean"] for r in recs) / max(1, len(recs))
    n_zero = sum(bool(r.get("position_zero")) for r in recs)
    n_unknown = sum(unknown_target(r["p_clean"], True, min_p_clean) is not None for r in recs)
    return KnockoutSweepResult(dataset=dataset, layers=layers, window=window, sources=sources,
                               n_known=len(recs), n_scanned=len(results), fact_rows=rows, mean=mean,
                               sem=sem, mean_p_clean=pc, frac_below_half=below, model=model_name,
                               errors=list(errors or []), bos=bos, n_position_zero=n_zero,
                               n_unknown_target=n_unknown, min_p_clean=min_p_clean, stats=stats)


def knockout_sweep_from_log(sweep_dir: str | Path, *, min_p_clean: float | None = MIN_P_CLEAN,
                            **stats_kw) -> KnockoutSweepResult:
    """The :class:`KnockoutSweepResult` of a knockout sweep's log (``OUT/sweep``: ``config.json`` +
    ``items.jsonl``), with the per-cell statistics, read without the model and without writing
    to the directory — also while the sweep is still running (the facts logged so far).

    Errors of the run are not in the log (a failed fact is not logged), so ``errors`` is empty;
    ``stats_kw`` go to :func:`interp.stats.cell_stats`.
    """
    from ..sweep import read_sweep

    config, results = read_sweep(sweep_dir)
    if config.get("method") != "attention_knockout":
        from ..errors import ResultMissingError
        raise ResultMissingError(f"{sweep_dir} holds a {config.get('method', 'other')!r} sweep, not a knockout "
                                 f"sweep; give the OUT/sweep directory of `interp knockout --dataset`")
    n_layers = next((len(v["rel"][s]) for v in results.values() if v.get("known") and "rel" in v
                     for s in v["rel"]), 0)
    return summarise_sweep(results, config.get("dataset", ""), list(range(n_layers)), config["window"],
                           list(config["sources"]), config.get("model", ""), bos=config.get("bos", ""),
                           min_p_clean=min_p_clean, **stats_kw)
