"""Clean / corrupted prompt pairs for patching over a dataset: subject swaps of equal token length.

Activation patching compares two prompts position by position, so they must have the same
number of tokens.  For a known_1000-style fact set, a *subject swap* keeps fact A's prompt and
replaces its subject with the subject of another fact B of the **same relation** (so the
question is the same and only the entity changes), keeping the pair only when

* the model knows A (:func:`interp.known.check_known`, rule ``"first_token"``: its clean top-1
  token is the first token of ``" " + attribute``),
* the swapped prompt has exactly as many tokens as A's prompt, and
* the model knows B in A's wording (the same rule on the swapped prompt with B's attribute), and
  B's answer differs from A's (it is the ``wrong`` answer of the logit
  difference) — so both runs are facts the model recalls, and the pair contrasts two answers.

Pairs are taken in dataset order, one per fact A, with the first B that qualifies — the same
facts give the same pairs on every run.

:func:`patching_sweep` patches every pair (resumable through :class:`interp.sweep.Checkpoint`)
and averages the normalised effect by ROME's token categories of the clean subject, with per-cell
statistics over pairs (:mod:`interp.stats`) in :class:`PatchingSweepResult`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from ..known import answer_id, check_known
from ..results import Result


@dataclass(frozen=True)
class PromptPair:
    """One clean / corrupted pair: ``answer`` is the clean top-1, ``wrong`` the corrupted top-1."""

    id: str
    clean: str
    corrupt: str
    answer: str
    wrong: str
    subject: str
    corrupt_subject: str
    relation: str = ""

    def to_dict(self) -> dict:
        """The pair as plain JSON values (one line of a sweep's log)."""
        return asdict(self)


def subject_swap_pairs(model, dataset: str | Path | Sequence, n_pairs: int | None = 20, *,
                       candidates: int = 8, batch_size: int = 32) -> list[PromptPair]:
    """Up to ``n_pairs`` subject-swap pairs of equal token length from a known_1000-style dataset.

    ``candidates``: how many same-relation subjects of the right length are tried per fact.
    Facts are scanned in dataset order, ``batch_size`` at a time (one batched forward finds the
    known ones, one more runs their candidate swaps), and only as far as ``n_pairs`` needs.
    """
    from ..datasets import load_known_facts

    facts = load_known_facts(dataset)[0] if isinstance(dataset, (str, Path)) else list(dataset)
    tok = model.tokenizer

    def n_tokens(texts):
        texts = list(texts)
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []

    want = [answer_id(model, f.attribute) for f in facts]
    n_subj = dict(zip(range(len(facts)), n_tokens(f.subject for f in facts)))
    by_rel: dict[str, list[int]] = {}
    for i in range(len(facts)):
        by_rel.setdefault(facts[i].relation, []).append(i)
    pairs: list[PromptPair] = []
    for c0 in range(0, len(facts), batch_size):  # scan in dataset order, only as far as needed
        idx = list(range(c0, min(c0 + batch_size, len(facts))))
        checks = check_known(model, [facts[i] for i in idx], rule="first_token", batch_size=batch_size)
        known = [i for i, c in zip(idx, checks) if c.known]
        trials = []  # (a, b, swapped fact)
        for a, n_a in zip(known, n_tokens(facts[i].prompt for i in known)):
            f = facts[a]
            swaps = []
            for b in by_rel.get(f.relation, []):
                g = facts[b]
                if (b == a or g.subject == f.subject or want[b] == want[a] or n_subj[b] != n_subj[a]
                        or f.subject not in f.prompt):
                    continue
                swaps.append((a, b, replace(g, prompt=f.prompt.replace(f.subject, g.subject, 1))))
                if len(swaps) >= 4 * candidates:
                    break
            lens = n_tokens(t[2].prompt for t in swaps)
            trials += [t for t, n in zip(swaps, lens) if n == n_a][:candidates]
        checks = check_known(model, [t[2] for t in trials], rule="first_token", batch_size=batch_size)
        done = set()
        for (a, b, swapped), c in zip(trials, checks):
            if a in done or not c.known:
                continue
            done.add(a)
            f, g = facts[a], facts[b]
            pairs.append(PromptPair(f"row{f.row}", f.prompt, swapped.prompt, tok.decode([want[a]]),
                                    tok.decode([want[b]]), f.subject, g.subject, f.relation))
        if n_pairs is not None and len(pairs) >= n_pairs:
            return pairs[:n_pairs]
    return pairs


# ----------------------------------------------------------------------------- patching over pairs
@dataclass
class PatchingSweepResult(Result):
    """Normalised patching effect per site × ROME token category × layer, over prompt pairs.

    ``mean[site][category]`` and ``se`` are per layer; ``stats[site][category]`` holds the bootstrap
    CI and the sign-flip p-values (``p_adj``: maxT over the whole grid) of :func:`interp.stats.cell_stats`.
    """

    stem = "patching_sweep"

    sites: list[str]
    layers: list[int]
    categories: list[str]
    n_pairs: int
    pairs: list[dict]
    mean: dict
    se: dict
    n: dict  # category -> pairs contributing
    stats: dict
    settings: dict = field(default_factory=dict)
    model: str = ""

    def significant(self, site: str, category: str, alpha: float | None = None) -> list[bool]:
        """Per layer: is the mean patching effect different from 0 after the grid-wide correction?"""
        from ..stats import significant_cells

        return significant_cells(self.stats, (site, category), len(self.layers), alpha)

    def figure(self, mask_nonsignificant: bool = False):
        """Mean effect per site × category × layer; ``mask_nonsignificant`` blanks the other cells."""
        return patching_sweep_figure(self, mask_nonsignificant=mask_nonsignificant)


def patching_sweep(model, pairs: Sequence[PromptPair], out_dir: str | Path, *,
                   sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"), direction: str = "denoise",
                   max_rows: int | None = None, progress: bool = True, **stats_kw) -> PatchingSweepResult:
    """Activation patching of every pair (resumable, one ``items.jsonl`` line per pair), averaged by
    ROME's token categories of the clean prompt's subject, with per-cell statistics over pairs.

    The per-pair value is the normalised effect ``(v − base) / (source − base)`` (1 = the patch
    restores the whole logit difference).  ``stats_kw`` go to :func:`interp.stats.cell_stats`.
    """
    from ..sweep import Checkpoint
    from .patching import GRID_SITES, activation_patching

    bad = [s for s in sites if s not in GRID_SITES]
    if bad:
        from ..errors import InterventionError
        raise InterventionError(f"patching_sweep averages [layer, position] grids: sites {bad} are not among "
                                f"{', '.join(GRID_SITES)}")
    ck = Checkpoint(out_dir, {"method": "activation patching over pairs", "model": model.name, "sites": list(sites),
                              "direction": direction, "metric": "logit_diff (normalised)"})
    for pr in ck.pending(pairs, lambda p: p.id, progress=progress, desc="patch pairs", unit="pair"):
        res = activation_patching(model, pr.clean, pr.corrupt, sites=list(sites), direction=direction,
                                  answer=pr.answer, wrong=pr.wrong, max_rows=max_rows)
        ck.add(pr.id, {"pair": pr.to_dict(), "tokens": res.tokens,
                       "subject_range": list(model.token_span(pr.clean, pr.subject)),
                       "clean_metric": res.clean_metric, "corrupt_metric": res.corrupt_metric,
                       "normalized": {s: res.normalized(s).tolist() for s in sites}})
    recs = [ck.done[p.id] for p in pairs if p.id in ck]
    res = summarise_patching_sweep(recs, list(sites), model.n_layers, model.name, **stats_kw)
    res.save(out_dir)
    return res


def summarise_patching_sweep(recs: list[dict], sites: list[str], n_layers: int, model_name: str = "",
                             **stats_kw) -> PatchingSweepResult:
    """Per-pair category means → :func:`interp.stats.cell_stats` over pairs."""
    from ..stats import cell_stats
    from .causal_trace import CATEGORIES, fact_categories

    x = torch.full((len(recs), len(sites), len(CATEGORIES), n_layers), float("nan"), dtype=torch.float64)
    for i, r in enumerate(recs):
        cats = fact_categories(r["subject_range"], len(r["tokens"]))
        for a, s in enumerate(sites):
            g = torch.tensor(r["normalized"][s], dtype=torch.float64)  # layer pos
            for c, pos in cats.items():
                x[i, a, CATEGORIES.index(c)] = g[:, pos].mean(1)
    st = cell_stats(x, **stats_kw)
    mean, se, stats = {}, {}, {"settings": st.settings}
    n = {c: int(st.n[0, j, 0]) for j, c in enumerate(CATEGORIES)}
    for a, s in enumerate(sites):
        mean[s], se[s], stats[s] = {}, {}, {}
        for j, c in enumerate(CATEGORIES):
            if n[c]:
                mean[s][c], se[s][c] = st.mean[a, j].tolist(), st.se[a, j].tolist()
                stats[s][c] = {f: getattr(st, f)[a, j].tolist() for f in ("ci_low", "ci_high", "p", "p_adj")}
    pairs = [{k: r["pair"][k] for k in ("id", "clean", "corrupt", "answer", "wrong")} for r in recs]
    return PatchingSweepResult(sites, list(range(n_layers)), [c for c in CATEGORIES if n[c]], len(recs), pairs,
                               mean, se, n, stats,
                               {"value": "normalised effect (v - base) / (source - base), logit difference",
                                "categories": "ROME token categories of the clean prompt's subject"}, model_name)


def patching_sweep_figure(res: PatchingSweepResult, mask_nonsignificant: bool = False):
    """Heatmaps of the mean normalised effect, token category × layer, one panel per site."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import DIVERGING, style
    from .causal_trace import CATEGORY_LABELS

    nan = float("nan")
    fig = make_subplots(rows=1, cols=len(res.sites), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=res.sites)
    for i, s in enumerate(res.sites):
        cats = [c for c in res.categories if c in res.mean[s]]
        z = [list(res.mean[s][c]) for c in cats]
        if mask_nonsignificant:
            z = [[v if ok else nan for v, ok in zip(row, res.significant(s, c))] for row, c in zip(z, cats)]
        st = res.stats[s]
        custom = [[[res.se[s][c][l], st[c]["ci_low"][l], st[c]["ci_high"][l], st[c]["p_adj"][l]]
                   for l in range(len(res.layers))] for c in cats]
        fig.add_trace(go.Heatmap(z=z, x=res.layers, y=[f"{CATEGORY_LABELS[c]} (n={res.n[c]})" for c in cats],
                                 customdata=custom, colorscale=DIVERGING, zmid=0, zmin=-1, zmax=1,
                                 showscale=i == 0, colorbar=dict(title="normalised"),
                                 hovertemplate=("layer %{x}<br>%{y}<br>%{z:.3f} ± %{customdata[0]:.3f}<br>95% CI "
                                                "[%{customdata[1]:.3f}, %{customdata[2]:.3f}], p_adj="
                                                "%{customdata[3]:.3g}<extra>" + s + "</extra>")), 1, i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    masked = (f"; blank: p_adj ≥ {res.stats['settings']['alpha']} ({res.stats['settings']['correction']})"
              if mask_nonsignificant else "")
    return style(fig, title=(f"Activation patching over {res.n_pairs} subject swaps (denoising, normalised logit "
                             f"difference) — {res.model}{masked}"), width=380 * len(res.sites) + 300, height=460)
