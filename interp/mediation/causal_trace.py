"""ROME causal tracing (Meng et al. 2022, kmeng01/rome ``experiments/causal_trace.py``) as batched rows.

Design note
-----------
One trace is one :class:`~interp.interventions.InterventionPlan` over copies of the prompt:

* row 0 is the **clean** run (no edit);
* ``samples`` rows are the **corrupted** baseline: Gaussian noise ``ν·ε`` is *added* to the
  token-embedding output (site ``embed`` — no positional embedding is touched) at the subject
  positions only;
* for every restoration (kind, layer, token) there are ``samples`` more rows, each carrying the
  *same* noise draw as the baseline row of the same sample index (ε is drawn once per trace from
  ``seed``; row ``s`` of every block reuses ``ε[s]``), plus ``set`` edits that copy the clean
  value from row 0 of the same forward (``source_row=0``).  Because every restoration sees the
  identical noise, the grid is smooth and "restore nothing" reproduces ``p_corrupt`` exactly.

The probability of the target is reduced on the fly (``logits=fn`` keeps one number per row),
so a 30-layer × 10-token × 10-sample × 3-kind grid (≈9,000 rows) runs in fixed memory, chunked
by ``max_rows``.  Restorations at tokens *before* the first corrupted token are not run: those
states are identical in the clean and corrupted runs (causal attention), so their restored
probability is exactly ``p_corrupt`` and is filled in as such.

Conventions (where ROME's paper and code differ, the code is followed):

* the kinds are interp's component names (:data:`interp.arch.COMPONENTS`): ``resid`` — ROME's
  "hidden" — restores ``resid_post`` of one layer (the block output); ``mlp`` / ``attn``
  restore ``mlp_out`` / ``attn_out`` of the token over a window of layers from
  :func:`interp.windows.window_layers`: ``range(l − window//2, l + ceil(window/2))`` clipped to
  the model — ROME's code ``range(l-5, l+5)`` for ``window=10``, the same layers as
  ``interp knockout``; ``window_convention="rome_paper"`` takes the paper's ``[l−4, l+5]``.
  ``windows`` in the result lists every window's layers.
* noise ``"3sd"`` = 3 × one scalar standard deviation over all entries of the embeddings of the
  subject tokens of a set of subjects (ROME: its known_1000 subjects; here: the subjects of the
  dataset being traced, or ``noise_subjects=``), falling back to the whole embedding matrix for a
  single trace with no subject set.  A float is an absolute scale.
* the target defaults to the clean top-1 token; a target string of several tokens is traced by
  its **first** token, with a warning and ``target_multi_token=True`` in the result.
* a subject occurring twice: the first occurrence by default, or ``occurrence=k`` (0-based,
  ``-1`` = last).
* indirect effect (IE) = p_restored − p_corrupt; total effect (TE) = p_clean − p_corrupt.

Dataset sweeps (:func:`trace_dataset`) keep the facts the model knows (ROME: the clean greedy
token, stripped, equals the attribute; or ``min_p``: p(attribute's first token) ≥ threshold),
trace each one (resumable, one JSONL line per fact) and average IE over facts by ROME's token
categories with standard errors (std / √n over facts).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..arch import COMPONENTS, check_components
from ..errors import InterventionError, PromptError
from ..interventions import InterventionPlan
from ..known import MIN_P_CLEAN, check_target
from ..remote import ships_with_requests
from ..results import Result
from ..shipped import token_prob
from ..windows import DEFAULT_CONVENTION, WINDOW_CONVENTIONS, check_convention, window_layers

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)

#: ROME's token categories for average effects (notebooks/average_causal_effects)
CATEGORIES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
CATEGORY_LABELS = {"first_subject": "First subject token", "middle_subject": "Middle subject tokens",
                   "last_subject": "Last subject token", "first_subsequent": "First subsequent token",
                   "further": "Further tokens", "last": "Last token"}


def check_settings(kinds, window: int, samples: int) -> tuple[str, ...]:
    """Trace kinds (names of :data:`interp.arch.COMPONENTS`) as a tuple; window and samples checked."""
    kinds = tuple(check_components(kinds, "trace kind"))
    if not isinstance(window, int) or window <= 0:
        raise InterventionError(f"window must be a positive number of layers, not {window!r} "
                                f"(ROME uses 10; 1 restores a single layer)")
    if not isinstance(samples, int) or samples <= 0:
        raise InterventionError(f"samples must be a positive number of noise draws, not {samples!r} "
                                f"(ROME uses 10)")
    return kinds


# ----------------------------------------------------------------------------- noise
def noise_level(model, subjects: Sequence[str] | None = None, factor: float = 3.0) -> float:
    """ROME's "3sd": ``factor`` × the std of all entries of the subjects' token embeddings.

    With no subjects, the std over the whole embedding matrix is used instead.  Computed where the
    model runs (:func:`embedding_std`): a remote model's embeddings never travel.
    """
    ids = None
    if subjects:
        ids = []
        for s in subjects:
            ids.extend(model.tokenizer(s, add_special_tokens=False)["input_ids"])
        if not ids:
            raise PromptError("the noise subjects tokenise to nothing")
        ids = torch.tensor(ids)
    return float(factor * model.compute(embedding_std, ids))


def embedding_std(w, ids: Tensor | None) -> Tensor:
    """Std of all entries of the token embeddings of ``ids`` (None: of every token)."""
    emb = w.W_E if ids is None else w.W_E[ids.to(w.W_E.device)]
    return emb.float().std()


def resolve_noise(model, noise, subjects=None) -> float:
    """The absolute noise scale of ``noise``: ``"3sd"`` / ``"Ksd"`` (× subjects' embedding std) or a float."""
    if isinstance(noise, str):
        s = noise.strip().lower()
        if s.endswith("sd"):
            try:
                f = float(s[:-2] or 1)
            except ValueError:
                raise InterventionError(f"noise {noise!r}: use '3sd' or a float") from None
            return noise_level(model, subjects, f)
        try:
            return float(s)
        except ValueError:
            raise InterventionError(f"noise {noise!r}: use '3sd', 'Ksd' or an absolute float") from None
    if isinstance(noise, (int, float)) and noise >= 0:
        return float(noise)
    raise InterventionError(f"noise must be '3sd' or a non-negative float, not {noise!r}")


# ----------------------------------------------------------------------------- setup
@dataclass
class TraceSetup:
    """Everything a trace's rows need: the text, spans, target and the noise draws."""

    text: str
    tokens: list[str]
    subject_range: tuple[int, int]
    corrupt_positions: list[int]
    target: str
    target_id: int
    target_multi_token: bool
    noise: Tensor  # [samples, n_corrupt, d_model], already scaled
    noise_level: float
    context_range: tuple[int, int] | None = None
    question_start: int = 0
    top_id: int = -1  # the clean top-1 token


def prepare_trace(model, prompt: str, subject: str, target: str | None = None, *, samples: int = 10,
                  noise="3sd", seed: int = 0, occurrence: int = 0, context: str | None = None,
                  corrupt: str | None = None, noise_subjects: Sequence[str] | None = None,
                  template: str | None = None) -> TraceSetup:
    """Resolve spans, the target and the noise draws of one trace (one clean forward: the top-1)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty: give the factual prompt, e.g. 'The Eiffel Tower is in'")
    if not isinstance(subject, str) or not subject.strip():
        raise PromptError("the subject is empty: give the subject as it appears in the prompt")
    if subject not in prompt:
        from ..errors import SpanNotFoundError
        raise SpanNotFoundError(f"subject {subject!r} does not occur in the prompt {prompt!r}: check "
                                f"spelling, case and spacing")
    context_range = None
    q_char = 0
    if context is not None:
        from ..prompts import rag_prompt
        rp = rag_prompt(prompt, context, template=template)
        text, q_char = rp.text, rp.question_start
        occ_before = text[:q_char].count(subject)
        n_in_q = prompt.count(subject)
        occ = occurrence if occurrence >= 0 else n_in_q + occurrence
        if not 0 <= occ < n_in_q:
            from ..errors import SpanNotFoundError
            raise SpanNotFoundError(f"subject {subject!r} occurs {n_in_q} time(s) in the question; "
                                    f"occurrence={occurrence} does not exist")
        subject_range = model.token_span(text, subject, occ_before + occ)
        context_range = model.token_span(text, context.strip(), 0)
    else:
        text = prompt
        subject_range = model.token_span(text, subject, occurrence)
    corrupt = corrupt or ("subject+context" if context is not None else "subject")
    if corrupt == "subject":
        cpos = list(range(*subject_range))
    elif corrupt == "subject+context":
        if context_range is None:
            raise InterventionError("corrupt='subject+context' needs a context")
        cpos = sorted(set(range(*subject_range)) | set(range(*context_range)))
    else:
        raise InterventionError(f"corrupt must be 'subject' or 'subject+context', not {corrupt!r}")
    tokens = model.to_str_tokens(text)
    q_start = 0
    if context is not None:
        b = model.tokenize(text)
        q_start = next(i for i, (a, e) in enumerate(b.offsets[0]) if e > q_char)
    multi = False
    top = int(model.run(text, logits=lambda lg: lg.argmax(-1)).logits[0])
    if target is None:
        tid = top
        target = model.tokenizer.decode([tid])
    else:
        tid, multi = model.encode_target(target)
        if multi:
            first = model.tokenizer.decode([tid])
            warnings.warn(f"target {target!r} has several tokens; tracing its first token {first!r} "
                          f"(target_multi_token=True in the result)", stacklevel=3)
    level = resolve_noise(model, noise, noise_subjects)
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(samples, len(cpos), model.adapter.d_model, generator=g)
    return TraceSetup(text, tokens, subject_range, cpos, target, tid, multi, eps * level, level,
                      context_range, q_start, top)


# ----------------------------------------------------------------------------- rows
Restoration = Sequence[tuple[str, int, Sequence[int]]]


def restoration_probs(model, setup: TraceSetup, restorations: Sequence[Restoration], *,
                      max_rows: int | None = None, skip: bool = True, progress: bool = False
                      ) -> tuple[float, float, Float[Tensor, "n_restorations"], str]:
    """p_clean, p_corrupt and, per restoration, the mean target probability over noise samples.

    A restoration is a list of ``(site, layer, positions)`` whose clean values are copied into
    the corrupted rows.  All rows run in one chunked ``model.run``: row 0 clean; ``samples``
    corrupted rows derived from it (noise ``ε[s]`` added to the subject's token embeddings);
    then ``samples`` rows per restoration, row ``s`` derived from corrupted row ``s`` (so it
    carries the same noise draw) plus ``set`` edits copying the clean values from row 0.  An
    engine that skips work starts each restoration at its restored layer and token (``skip``).
    Returns the three numbers and the path that ran (``"skip"`` or ``"plan"``).
    """
    from ..interventions import Edit

    S = setup.noise.shape[0]
    n_rows = 1 + S * (1 + len(restorations))
    batch = model.tokenize([setup.text]).select([0] * n_rows)
    plan = InterventionPlan(batch)
    cpos = setup.corrupt_positions
    edits = plan.edits
    for s in range(S):
        plan.derive(1 + s, 0)
        edits.append(Edit("embed", None, 1 + s, cpos, "add", setup.noise[s]))
    for block, restore in enumerate(restorations, start=1):
        for s in range(S):
            r = 1 + block * S + s
            plan.derive(r, 1 + s)
            for site, layer, pos in restore:
                edits.append(Edit(site, layer, r, list(pos), "set", None, 0))
    tid = setup.target_id
    out = model.run(plan=plan, logits=lambda lg: token_prob(lg, tid), max_rows=max_rows,
                    skip=skip, progress=progress)
    p = out.logits.cpu().double()
    p_clean = float(p[0])
    blocks = p[1:].view(1 + len(restorations), S).mean(1)
    return p_clean, float(blocks[0]), blocks[1:].float(), out.extra.get("path", "plan")


def restored_layers(kind: str, layer: int, window: int, n_layers: int,
                    convention: str = DEFAULT_CONVENTION) -> list[int]:
    """The layers a restoration of ``kind`` centred on ``layer`` copies (one for ``resid``)."""
    return [layer] if kind == "resid" else window_layers(layer, window, n_layers, convention)


def grid_restorations(kind: str, n_layers: int, positions: Sequence[int], window: int,
                      convention: str = DEFAULT_CONVENTION) -> list[tuple[int, int, Restoration]]:
    """(layer, token, restoration) for every cell of one kind's grid."""
    site = COMPONENTS[kind]
    out = []
    for l in range(n_layers):
        lays = restored_layers(kind, l, window, n_layers, convention)
        for t in positions:
            out.append((l, t, [(site, k, [t]) for k in lays]))
    return out


# ----------------------------------------------------------------------------- result
@dataclass
class CausalTraceResult(Result):
    """One causal trace: per kind a layers × tokens grid of restored target probability."""

    stem = "trace"

    prompt: str
    subject: str
    tokens: list[str]
    subject_range: list[int]
    target: str
    target_id: int
    p_clean: float
    p_corrupt: float
    kinds: list[str]
    layers: list[int]
    p_restored: dict  # kind -> [layer][token] (None for tokens not traced)
    indirect_effect: dict  # kind -> [layer][token]
    settings: dict
    seed: int
    target_multi_token: bool = False
    traced_positions: list[int] = field(default_factory=list)
    context: str | None = None
    context_range: list[int] | None = None
    model: str = ""
    #: kind -> for every layer of ``layers``, the layers its restoration copies
    windows: dict = field(default_factory=dict)
    #: why the target is not one the model predicts (not its top-1, or p_clean < min_p_clean), or None
    unknown_target: str | None = None
    target_is_top1: bool = True

    def summary_line(self) -> str:
        """One line: p_clean, p_corrupt, the largest indirect effect per kind and the unknown-target flag."""
        peaks = []
        for k in self.kinds:
            g = self.grid(k, effect=True)
            l, t = divmod(int(g.nan_to_num(-1e9).argmax()), g.shape[1])
            peaks.append(f"{k} {float(g[l, t]):.3f} at layer {l}, {self.tokens[t]!r}")
        flag = f"; unknown target: {self.unknown_target}" if self.unknown_target else ""
        return (f"CausalTraceResult({self.model}: p_clean({self.target!r})={self.p_clean:.3f}, "
                f"p_corrupt={self.p_corrupt:.3f}; max IE {'; '.join(peaks)}{flag})")

    @property
    def total_effect(self) -> float:
        """p_clean − p_corrupt (ROME's total effect)."""
        return self.p_clean - self.p_corrupt

    def grid(self, kind: str, effect: bool = False) -> Float[Tensor, "layer token"]:
        """One kind's ``[layer, token]`` grid of restored probabilities (or of indirect effects); NaN where not traced."""
        src = self.indirect_effect if effect else self.p_restored
        return torch.tensor([[float("nan") if v is None else v for v in row] for row in src[kind]])

    def figure(self):
        """ROME-style heatmaps, one per kind (:func:`trace_figure`)."""
        return trace_figure(self)


def causal_trace(model, prompt: str, subject: str, target: str | None = None, *,
                 kinds: Sequence[str] = ("resid", "mlp", "attn"), window: int = 10, samples: int = 10,
                 noise: str | float = "3sd", seed: int = 0, occurrence: int = 0,
                 context: str | None = None, corrupt: str | None = None,
                 noise_subjects: Sequence[str] | None = None, positions: Sequence[int] | None = None,
                 template: str | None = None, window_convention: str = DEFAULT_CONVENTION,
                 min_p_clean: float | None = MIN_P_CLEAN, max_rows: int | None = None, fast: bool = True,
                 progress: bool = False) -> CausalTraceResult:
    """ROME causal trace of ``prompt`` (Meng et al. 2022, Fig. 1 / ``calculate_hidden_flow``).

    Args:
        subject: text of the subject in the prompt (first occurrence, or ``occurrence=k``).
        target: answer token to track (default: clean top-1); several tokens → first token.
        kinds: any of ``resid`` (resid_post, one layer; ROME's "hidden"), ``mlp`` / ``attn`` (module output
            over ``window`` layers, ROME-code window ``[l-w//2, l+ceil(w/2))`` clipped).
        window_convention: ``"rome_code"`` (default) or ``"rome_paper"``
            (:mod:`interp.windows`); ``windows`` in the result lists each window's layers.
        samples: noise draws; noise: ``"3sd"`` (× std of subject embeddings — of
            ``noise_subjects`` if given, else the embedding matrix) or an absolute float.
        context: a retrieved context placed before the question (see :mod:`.rag`); the subject
            range then refers to the question's subject; ``corrupt`` = ``"subject"`` or
            ``"subject+context"`` (default with a context, as Wadhwa et al. 2024).
        positions: tokens to trace (default: all; with a context: the question's tokens).
        min_p_clean: warn (:class:`~interp.errors.UnknownTargetWarning`; ``unknown_target`` in
            the result) when the target is not the clean top-1 or p_clean is below this — the
            heatmap of a fact the model does not know is a heatmap of noise.  None checks only
            the top-1 condition.
        fast: when the engine can skip work (capability ``skip_work``; the ``hf`` engine on
            every supported architecture), compute each restoration only from its first restored
            layer and token on (:mod:`interp.skipping`; the same numbers, tested); otherwise, or
            with ``fast=False``, every row in full.

    Returns:
        :class:`CausalTraceResult` with ``p_restored[kind]`` of shape [layers][tokens].
    """
    kinds = check_settings(kinds, window, samples)
    check_convention(window_convention)
    setup = prepare_trace(model, prompt, subject, target, samples=samples, noise=noise, seed=seed,
                          occurrence=occurrence, context=context, corrupt=corrupt,
                          noise_subjects=noise_subjects, template=template)
    n = len(setup.tokens)
    L = model.n_layers
    if positions is None:
        positions = list(range(setup.question_start, n))
    positions = sorted({p % n for p in positions})
    first_c = min(setup.corrupt_positions)
    run_pos = [t for t in positions if t >= first_c]
    cells, rests = [], []
    for kind in kinds:
        for l, t, r in grid_restorations(kind, L, run_pos, window, window_convention):
            cells.append((kind, l, t))
            rests.append(r)
    p_clean, p_corrupt, probs, path = restoration_probs(model, setup, rests, max_rows=max_rows, skip=fast,
                                                        progress=progress)
    grids = {k: [[None] * n for _ in range(L)] for k in kinds}
    for k in kinds:
        for l in range(L):
            for t in positions:
                if t < first_c:
                    grids[k][l][t] = p_corrupt  # unaffected by the noise: restoring changes nothing
    for (k, l, t), p in zip(cells, probs.tolist()):
        grids[k][l][t] = p
    ie = {k: [[None if v is None else v - p_corrupt for v in row] for row in g] for k, g in grids.items()}
    why = check_target(setup.target, p_clean, setup.target_id == setup.top_id, min_p_clean=min_p_clean,
                       method="causal_trace")
    settings = {"kinds": list(kinds), "window": window, "window_convention": window_convention,
                "samples": samples, "noise": noise, "noise_level": setup.noise_level,
                "noise_site": "embed (token embedding output, subject positions)",
                "corrupt": corrupt or ("subject+context" if context is not None else "subject"),
                "corrupt_positions": setup.corrupt_positions, "occurrence": occurrence,
                "engine": model.engine_name, "target_rule": "clean top-1" if target is None else "given",
                "metric": "mean over noise samples of softmax(last-token logits)[target]",
                "path": ("skip: each restoration from its restored layer and token on" if path == "skip"
                         else "plan: every row in full"),
                "min_p_clean": min_p_clean}
    return CausalTraceResult(prompt, subject, setup.tokens, list(setup.subject_range), setup.target,
                             setup.target_id, p_clean, p_corrupt, list(kinds), list(range(L)), grids, ie,
                             settings, seed, setup.target_multi_token, positions, context,
                             list(setup.context_range) if setup.context_range else None, model.name,
                             {k: [restored_layers(k, l, window, L, window_convention) for l in range(L)]
                              for k in kinds}, why, setup.target_id == setup.top_id)


# ----------------------------------------------------------------------------- figures
_KIND_SCALE = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
_KIND_TITLE = {"resid": "single restored layer (resid_post)", "mlp": "restored MLP (window)",
               "attn": "restored attention (window)"}


def trace_figure(res: CausalTraceResult):
    """ROME-style heatmaps (tokens down, layers across; subject tokens starred), one per kind."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import style

    pos = res.traced_positions or list(range(len(res.tokens)))
    b, e = res.subject_range
    labels = [f"{t}: {res.tokens[t]!r}{' *' if b <= t < e else ''}"[:24] for t in pos]
    fig = make_subplots(rows=1, cols=len(res.kinds), shared_yaxes=True, horizontal_spacing=0.08,
                        subplot_titles=[_KIND_TITLE[k] for k in res.kinds])
    for i, k in enumerate(res.kinds):
        g = res.grid(k)[:, pos].T.numpy()  # tokens down (rows = y), layers across
        fig.add_trace(go.Heatmap(
            z=g, x=res.layers, y=labels, colorscale=_KIND_SCALE[k], zmin=res.p_corrupt,
            zmax=max(float(torch.nan_to_num(torch.tensor(g), nan=0).max()), res.p_corrupt + 1e-6),
            colorbar=dict(title=f"p({res.target!r})" if i == 0 else "", x=1.0 + 0.06 * i, len=0.8),
            hovertemplate="layer %{x}<br>%{y}<br>p=%{z:.4f}<extra>" + k + "</extra>"), 1, i + 1)
        fig.update_xaxes(title_text="layer" if k == "resid" else "centre of window", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    title = (f"Causal trace — {res.model}: target {res.target!r}, p_clean={res.p_clean:.3f}, "
             f"p_corrupt={res.p_corrupt:.3f}")
    return style(fig, title=title, width=380 * len(res.kinds) + 260, height=max(420, 26 * len(pos) + 200))


# ----------------------------------------------------------------------------- dataset sweep
def fact_categories(subject_range: Sequence[int], n: int) -> dict[str, list[int]]:
    """ROME's token categories for a prompt of ``n`` tokens with subject ``[b, e)``.

    first/last subject token (the same token for a one-token subject), middle subject tokens
    (b+1..e-2), first subsequent token (e, when it is not the last token), further tokens
    (e+1..n-2) and the last token (n-1).  Empty categories are left out for that fact.
    """
    b, e = subject_range
    cats = {"first_subject": [b], "middle_subject": list(range(b + 1, e - 1)), "last_subject": [e - 1],
            "first_subsequent": [e] if e < n - 1 else [], "further": list(range(e + 1, n - 1)),
            "last": [n - 1]}
    return {k: v for k, v in cats.items() if v}


@dataclass
class TraceSweepResult(Result):
    """Average indirect effect by ROME token category × layer over the known facts of a dataset."""

    stem = "trace_sweep"

    dataset: str
    n_rows: int
    n_loaded: int
    n_scanned: int
    n_known: int
    n_traced: int
    skipped: list  # [row, why]
    kinds: list[str]
    layers: list[int]
    categories: list[str]
    aie: dict  # kind -> category -> [layer]
    se: dict  # kind -> category -> [layer]
    n_facts: dict  # category -> number of facts contributing
    mean_p_clean: float
    mean_p_corrupt: float
    peaks: dict  # kind -> {category, layer, aie}
    settings: dict
    seed: int
    model: str = ""
    #: errors inside the sweep: [{"row", "fact", "error"}] (the sweep went on without those facts)
    errors: list = field(default_factory=list)
    #: traced facts whose target is not the clean top-1 or has p_clean < ``min_p_clean``
    n_unknown_target: int = 0
    min_p_clean: float | None = None
    #: per-cell statistics over facts (:func:`interp.stats.cell_stats`): kind -> category ->
    #: {ci_low, ci_high, p, p_adj} per layer, and "settings" (test, correction, alpha)
    stats: dict = field(default_factory=dict)

    def significant(self, kind: str, category: str, alpha: float | None = None) -> list[bool]:
        """Per layer: is the AIE different from 0 after the grid-wide correction?"""
        from ..stats import significant_cells

        return significant_cells(self.stats, (kind, category), len(self.layers), alpha)

    def figure(self, mask_nonsignificant: bool = False):
        """ROME's average-indirect-effect heatmaps (:func:`sweep_figure`)."""
        return sweep_figure(self, mask_nonsignificant=mask_nonsignificant)


def fact_grid(items: list[dict], kinds, n_layers: int) -> Float[Tensor, "fact kind category layer"]:
    """Each fact's indirect effect averaged within ROME's token categories (NaN: no such token)."""
    x = torch.full((len(items), len(kinds), len(CATEGORIES), n_layers), float("nan"), dtype=torch.float64)
    for i, it in enumerate(items):
        cats = fact_categories(it["subject_range"], len(it["tokens"]))
        for a, k in enumerate(kinds):
            g = torch.tensor([[float("nan") if v is None else v for v in row] for row in it["ie"][k]],
                             dtype=torch.float64)  # layer token
            for c, pos in cats.items():
                x[i, a, CATEGORIES.index(c)] = g[:, pos].mean(1)
    return x


def _aggregate(items: list[dict], kinds, n_layers, **stats_kw):
    """AIE, s.e., facts per category and the per-cell statistics (:func:`interp.stats.cell_stats`)."""
    from ..stats import cell_stats

    st = cell_stats(fact_grid(items, kinds, n_layers), **stats_kw)
    aie, se, stats = {}, {}, {"settings": st.settings}
    nf = {c: int(st.n[0, j, 0]) for j, c in enumerate(CATEGORIES)}
    for a, k in enumerate(kinds):
        aie[k], se[k], stats[k] = {}, {}, {}
        for j, c in enumerate(CATEGORIES):
            if not nf[c]:
                aie[k][c] = se[k][c] = [None] * n_layers
                continue
            aie[k][c] = st.mean[a, j].tolist()
            se[k][c] = st.se[a, j].tolist()
            stats[k][c] = {f: getattr(st, f)[a, j].tolist() for f in ("ci_low", "ci_high", "p", "p_adj")}
    return aie, se, nf, stats


def trace_dataset(model, dataset, out_dir: str | Path, *, kinds: Sequence[str] = ("resid", "mlp", "attn"),
                  window: int = 10, samples: int = 10, noise: str | float = "3sd", seed: int = 0,
                  min_p: float | None = None, limit: int | None = None, max_known: int | None = None,
                  window_convention: str = DEFAULT_CONVENTION, min_p_clean: float | None = MIN_P_CLEAN,
                  max_rows: int | None = None, progress: bool = True,
                  shard: str | tuple[int, int] | None = None) -> TraceSweepResult:
    """ROME's average indirect effects (Meng et al. 2022): causal traces of every known fact of a
    known_1000-style dataset, averaged by token category.

    Args:
        dataset: a path (known_1000 JSON / JSONL, LRE, Fakepedia) or a list of
            :class:`interp.datasets.Fact`.
        out_dir: the sweep directory: ``items.jsonl`` + ``config.json`` (resumable: a rerun with
            the same settings skips finished facts) and ``trace_sweep.json``.
        min_p: known-fact rule: None → ROME's (clean top-1 token, stripped, equals the
            attribute); a float → p(first token of " " + attribute) ≥ ``min_p``.
        limit: scan only the first ``limit`` usable rows; ``max_known``: trace at most this many.
        min_p_clean: traced facts whose target has p_clean below it (or is not the top-1, under
            the ``min_p`` rule) are counted in ``n_unknown_target`` — one warning at the end.
        shard: ``"K/N"``: trace only every N-th known fact (the K-th of each N) into
            ``out_dir/shards/K-of-N/`` (see :mod:`interp.sweep`), so N processes share the sweep;
            the result (saved in the shard's directory) covers the facts finished so far.  A run
            without ``shard`` merges the shards' logs and traces whatever is left.

    Rows with a missing field or a subject not in its prompt are reported in ``skipped`` with
    their row number; an error while scanning or tracing a fact is counted and listed in
    ``errors`` (row, fact, error) and on stderr.  The sweep goes on with the rest either way.
    """
    from ..datasets import Fact, dataset_label, load_known_facts
    from ..errors import UnknownTargetWarning
    from ..known import check_known
    from ..sweep import Checkpoint, SweepErrors, describe_fact, map_batches

    kinds = check_settings(kinds, window, samples)
    check_convention(window_convention)
    if min_p is not None and not 0 <= min_p <= 1:
        from ..errors import SettingError
        raise SettingError(f"min_p (--min-p) is a probability, not {min_p}: give a value in [0, 1], or leave "
                           f"it out for ROME's rule (clean top-1 == attribute)")
    if isinstance(dataset, (str, Path)):
        facts, report = load_known_facts(dataset)
        name, n_rows, skipped = dataset_label(dataset), report.n_rows, [list(s) for s in report.skipped]
    else:
        facts, name, n_rows, skipped = list(dataset), "<facts>", len(dataset), []
    for r, why in skipped:
        warnings.warn(f"dataset row {r} skipped: {why}", stacklevel=2)
    n_loaded = len(facts)
    if limit is not None:
        facts = facts[:limit]
    level = resolve_noise(model, noise, [f.subject for f in facts])
    # known facts (ROME's rule, or p(attribute) >= min_p): batched clean forwards
    tok = model.tokenizer
    rule = "rome" if min_p is None else "min_p"
    errors = SweepErrors("trace sweep")
    checks = map_batches(lambda b: check_known(model, b, rule=rule, min_p=min_p, batch_size=len(b)), facts, 64,
                         errors, describe_fact)
    known: list[tuple[Fact, int]] = [(f, c.target_id) for f, c in zip(facts, checks) if c is not None and c.known]
    n_known = len(known)
    if max_known is not None:
        known = known[:max_known]
    config = {"dataset": name, "kinds": list(kinds), "window": window, "samples": samples, "noise": noise,
              "noise_level": round(level, 8), "seed": seed, "min_p": min_p, "model": model.name,
              "limit": limit, "window_convention": window_convention}
    ck = Checkpoint(out_dir, config, shard=shard)
    for f, tid in ck.pending(known, lambda ft: f"row{ft[0].row}", progress=progress, desc="trace facts",
                             unit="fact"):
        key = f"row{f.row}"
        try:
            with warnings.catch_warnings():  # counted below, warned about once at the end
                warnings.simplefilter("ignore", UnknownTargetWarning)
                res = causal_trace(model, f.prompt, f.subject, tok.decode([tid]), kinds=kinds, window=window,
                                   samples=samples, noise=level, seed=seed, window_convention=window_convention,
                                   min_p_clean=min_p_clean, max_rows=max_rows)
        except Exception as e:  # noqa: BLE001 — count and list the fact, go on with the rest
            errors.add(*describe_fact(f), e)
            continue
        ck.add(key, {"row": f.row, "tokens": res.tokens, "subject_range": res.subject_range,
                     "p_clean": res.p_clean, "p_corrupt": res.p_corrupt, "ie": res.indirect_effect,
                     "top1": res.target_is_top1})
    wanted = {f"row{f.row}" for f, _ in known}
    items = [v for k, v in ck.results() if k in wanted and ck.finished(k)]
    res = summarise_trace_sweep(items, config, model.n_layers, n_rows=n_rows, n_loaded=n_loaded,
                                n_scanned=len(facts), n_known=n_known, skipped=skipped, errors=errors.by_row(),
                                min_p_clean=min_p_clean)
    res.save(ck.dir)
    if res.n_unknown_target:
        warnings.warn(f"trace_dataset: {res.n_unknown_target} of {len(items)} traced facts track a target the model "
                      f"does not predict (p_clean < {min_p_clean} or not its top-1)", UnknownTargetWarning,
                      stacklevel=2)
    return res


def summarise_trace_sweep(items: list[dict], config: dict, n_layers: int, *, n_rows: int, n_loaded: int,
                          n_scanned: int, n_known: int, skipped: list, errors: list,
                          min_p_clean: float | None = MIN_P_CLEAN, **stats_kw) -> TraceSweepResult:
    """The :class:`TraceSweepResult` of logged traces (``items``: the facts' log records, ``config``:
    the sweep's settings): AIE, s.e. and per-cell statistics by token category, peaks, counts.
    ``stats_kw`` go to :func:`interp.stats.cell_stats`.  Facts are taken in dataset-row order, so the
    numbers do not depend on the order they finished in (one process, shards, a resumed run)."""
    from ..known import KNOWN_RULES, unknown_target

    items = sorted(items, key=lambda i: i.get("row", 0))
    kinds = list(config["kinds"])
    aie, se, nf, stats = _aggregate(items, kinds, n_layers, **stats_kw) if items else ({}, {}, {}, {})
    n_unknown = sum(unknown_target(i["p_clean"], i.get("top1", True), min_p_clean) is not None for i in items)
    peaks = {}
    for k in aie:
        best = max(((c, l, v) for c in CATEGORIES for l, v in enumerate(aie[k][c]) if v is not None),
                   key=lambda x: x[2])
        peaks[k] = {"category": best[0], "layer": best[1], "aie": best[2]}
    min_p = config.get("min_p")
    rule = "rome" if min_p is None else "min_p"
    st = stats.get("settings", {})
    return TraceSweepResult(config["dataset"], n_rows, n_loaded, n_scanned, n_known, len(items), skipped, kinds,
                            list(range(n_layers)), list(CATEGORIES), aie, se, nf,
                            sum(i["p_clean"] for i in items) / max(1, len(items)),
                            sum(i["p_corrupt"] for i in items) / max(1, len(items)), peaks,
                            {**config, "known_rule": KNOWN_RULES[rule].replace("min_p", str(min_p)),
                             "window_layers": WINDOW_CONVENTIONS[config.get("window_convention", DEFAULT_CONVENTION)],
                             "se": "std over facts / sqrt(n)",
                             "stats": (f"bootstrap {st.get('level', 0.95):.0%} CI over facts; sign-flip p, "
                                       f"{st.get('correction', 'maxT')}-corrected over the grid"),
                             "pooling": "middle/further tokens averaged within a fact, then over facts"},
                            config.get("seed", 0), config.get("model", ""), errors, n_unknown, min_p_clean, stats)


def trace_sweep_from_log(sweep_dir: str | Path, *, min_p_clean: float | None = MIN_P_CLEAN,
                         **stats_kw) -> TraceSweepResult:
    """The :class:`TraceSweepResult` of a trace sweep's directory (``config.json`` + ``items.jsonl``),
    with the per-cell statistics, read without the model and without writing to the directory —
    also while the sweep is still running (the facts traced so far).

    The dataset counts (rows, known facts, skipped rows, errors) are not in the log: they are taken
    from the directory's ``trace_sweep.json`` when the sweep finished; otherwise they are set to the
    traced count and ``settings["counts"]`` says so.  ``stats_kw`` go to :func:`interp.stats.cell_stats`.
    """
    import json

    from ..errors import ResultMissingError
    from ..sweep import read_sweep

    config, results = read_sweep(sweep_dir)
    if "kinds" not in config or "samples" not in config:
        raise ResultMissingError(f"{sweep_dir} is not a trace sweep's directory (its config.json has no kinds / "
                                 f"samples); give the --out directory of `interp trace --dataset`")
    items = [v for v in results.values() if isinstance(v, dict) and "ie" in v and "error" not in v]
    if not items:
        raise ResultMissingError(f"{sweep_dir} has no traced fact yet; wait for the sweep to log one")
    n_layers = len(next(iter(items[0]["ie"].values())))
    saved = Path(sweep_dir) / f"{TraceSweepResult.stem}.json"
    n = len(items)
    counts = {"n_rows": n, "n_loaded": n, "n_scanned": n, "n_known": n, "skipped": [], "errors": []}
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        counts = {k: old.get(k, v) for k, v in counts.items()}
    res = summarise_trace_sweep(items, config, n_layers, min_p_clean=min_p_clean, **counts, **stats_kw)
    if not saved.is_file():
        res.settings["counts"] = "from the log of a running sweep: rows / known counts not recorded, set to n_traced"
    return res


def sweep_figure(res: TraceSweepResult, mask_nonsignificant: bool = False):
    """ROME's average-indirect-effect heatmaps: token category × layer, one panel per kind.

    ``mask_nonsignificant`` blanks the cells whose corrected p-value is not below the sweep's
    alpha (:attr:`TraceSweepResult.stats`); the hover shows the bootstrap CI and the p-value.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import style

    nan = float("nan")
    cats = [c for c in res.categories if res.n_facts.get(c)]
    fig = make_subplots(rows=1, cols=len(res.kinds), shared_yaxes=True, horizontal_spacing=0.07,
                        subplot_titles=[f"AIE, {_KIND_TITLE[k]}" for k in res.kinds])
    for i, k in enumerate(res.kinds):
        z = [[v if v is not None else nan for v in res.aie[k][c]] for c in cats]
        if mask_nonsignificant and res.stats:
            z = [[v if ok else nan for v, ok in zip(row, res.significant(k, c))] for row, c in zip(z, cats)]
        st = {c: res.stats.get(k, {}).get(c) for c in cats}
        custom = [[[res.se[k][c][l] if res.se[k][c][l] is not None else nan]
                   + ([st[c]["ci_low"][l], st[c]["ci_high"][l], st[c]["p_adj"][l]] if st[c] else [nan] * 3)
                   for l in range(len(res.layers))] for c in cats]
        fig.add_trace(go.Heatmap(
            z=z, x=res.layers, y=[f"{CATEGORY_LABELS[c]} (n={res.n_facts[c]})" for c in cats],
            customdata=custom, colorscale=_KIND_SCALE[k], zmin=0,
            colorbar=dict(title="AIE" if i == 0 else "", x=1.0 + 0.06 * i, len=0.8),
            hovertemplate=("layer %{x}<br>%{y}<br>AIE=%{z:.4f} ± %{customdata[0]:.4f}<br>95% CI "
                           "[%{customdata[1]:.4f}, %{customdata[2]:.4f}], p_adj=%{customdata[3]:.3g}"
                           "<extra>" + k + "</extra>")),
            1, i + 1)
        fig.update_xaxes(title_text="layer" if k == "resid" else "centre of window", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    masked = (f"; blank: not significant (p_adj ≥ {res.stats['settings']['alpha']}, "
              f"{res.stats['settings']['correction']})") if mask_nonsignificant and res.stats else ""
    return style(fig, title=(f"Average indirect effect over {res.n_traced} known facts — {res.model} "
                             f"(p_clean={res.mean_p_clean:.3f}, p_corrupt={res.mean_p_corrupt:.3f}){masked}"),
                 width=400 * len(res.kinds) + 300, height=460)
