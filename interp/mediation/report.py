"""The causal-mediation section of ``interp figures``: one trace, a known_1000 sweep, RAG, patching.

``report_sections(model, out_dir, quick)`` computes each analysis (or reuses it: results are kept
with :func:`interp.results.cached`, keyed by their settings, quick and full runs in separate
directories), draws its figure and returns one entry per figure.  Captions and numbers are read
from the results; nothing in them is written by hand.  ``quick=True`` shrinks every sweep (fewer
facts, noise samples) to stay within a few minutes on 2 cores.
"""

from __future__ import annotations

import shlex
from pathlib import Path

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
CORRUPT = "The Kremlin Palace is located in the city of"
KNOWN_1000 = "known_1000/known_1000.json"
FAKEPEDIA = "fakepedia/base_fakepedia_subset_slim.jsonl"


def _max_cell(res, kind: str) -> tuple[int, int, float]:
    g = res.grid(kind, effect=True)
    flat = int(g.nan_to_num(-1e9).argmax())
    l, t = divmod(flat, g.shape[1])
    return l, t, float(g[l, t])


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of ROME's causal tracing (one prompt, a dataset, with / without context) and patching."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .attribution import AttributionResult, attribution_patching, compare_with_patching
    from .causal_trace import CausalTraceResult, TraceSweepResult, causal_trace, trace_dataset
    from .patching import PatchingResult, activation_patching
    from .rag import RagComparisonResult, rag_comparison

    out_dir = Path(out_dir)
    sections = []

    # 1. one causal trace (ROME Fig. 1)
    d = result_dir(out_dir, "mediation_trace", quick)
    st = {"prompt": PROMPT, "subject": SUBJECT, "samples": 2 if quick else 10}
    cmd = shlex.join(["interp", "trace", "--prompt", PROMPT, "--subject", SUBJECT, "--samples",
                      str(st["samples"]), "--out", display_path(d)])
    tr = cached(CausalTraceResult, d, settings=st, model=model, command=cmd,
                compute=lambda: causal_trace(model, PROMPT, SUBJECT, samples=st["samples"]))
    save_figure(tr.figure(), out_dir, "mediation_trace")
    nums = {"p_clean": tr.p_clean, "p_corrupt": tr.p_corrupt, "samples": tr.settings["samples"]}
    for k in tr.kinds:
        l, t, v = _max_cell(tr, k)
        nums[f"{k}_max_ie"] = v
        nums[f"{k}_max_at"] = f"layer {l}, token {t} {tr.tokens[t]!r}"
    w = tr.settings["window"]
    mid = tr.windows.get("mlp", [[]])[len(tr.layers) // 2] if tr.windows else []
    b, e = tr.subject_range
    sections.append({
        "stem": "mediation_trace", "title": f"Causal trace of {PROMPT!r}", "numbers": nums, "command": cmd,
        "results": [d],
        "caption": (f"ROME causal tracing: probability of {tr.target!r} when one residual state (or a {w}-layer "
                    f"window of MLP / attention outputs{f', e.g. layers {mid[0]}–{mid[-1]} around {len(tr.layers) // 2}' if mid else ''}) "
                    f"is restored in {tr.settings['samples']} runs whose subject embeddings "
                    f"({' '.join(repr(x) for x in tr.tokens[b:e])}) carry Gaussian noise of scale "
                    f"{tr.settings['noise_level']:.3f}.")})

    # 2. known_1000 sweep (ROME's average indirect effects)
    d = result_dir(out_dir, "trace_sweep", quick)
    path = data_dir() / KNOWN_1000
    st = dict(limit=60, max_known=2, samples=1) if quick else dict(limit=200, max_known=8, samples=2)
    cmd = shlex.join(["interp", "trace", "--dataset", display_path(path), "--limit", str(st["limit"]),
                      "--max-known", str(st["max_known"]), "--samples", str(st["samples"]), "--out", display_path(d)])
    sw = cached(TraceSweepResult, d, settings={"dataset": KNOWN_1000, **st}, model=model, command=cmd,
                compute=lambda: trace_dataset(model, path, d, progress=False, **st))
    save_figure(sw.figure(), out_dir, "mediation_trace_sweep")
    nums = {"rows_scanned": sw.n_scanned, "known": sw.n_known, "traced": sw.n_traced,
            "mean_p_clean": sw.mean_p_clean, "mean_p_corrupt": sw.mean_p_corrupt}
    for k, pk in sw.peaks.items():
        nums[f"{k}_peak"] = f"AIE {pk['aie']:.3f} at {pk['category']}, layer {pk['layer']}"
    for k in sw.kinds:
        ls = sw.aie[k]["last_subject"]
        nums[f"{k}_last_subject_peak"] = max(v for v in ls if v is not None)
    sections.append({
        "stem": "mediation_trace_sweep", "title": "Average indirect effect on known_1000", "numbers": nums,
        "command": cmd, "results": [d],
        "caption": (f"ROME's average indirect effect by token category and layer over {sw.n_traced} of the "
                    f"{sw.n_known} facts the model knows among the first {sw.n_scanned} rows (known: "
                    f"{sw.settings.get('known_rule', 'clean top-1 == attribute')}), {sw.settings['samples']} "
                    f"noise sample(s) each, {sw.settings['window']}-layer windows; standard errors in the hover.")})

    # 3. the RAG condition (Wadhwa et al. 2024)
    d = result_dir(out_dir, "rag_comparison", quick)
    st = dict(n_facts=1, samples=1, scan=40) if quick else dict(n_facts=4, samples=2, scan=120)
    rg = cached(RagComparisonResult, d, settings={"dataset": FAKEPEDIA, **st}, model=model,
                command=f"interp figures --only mediation --out {display_path(out_dir)}" + (" --quick" if quick else ""),
                compute=lambda: rag_comparison(model, data_dir() / FAKEPEDIA, **st))
    save_figure(rg.figure(), out_dir, "mediation_rag")
    nums = {"facts": rg.n_facts}
    for c, s in rg.summary.items():
        for key in ("mlp_last_subject_peak", "resid_last_subject_peak", "attn_last_peak"):
            if key in s:
                nums[f"{c}:{key}"] = s[key]
        nums[f"{c}:answers"] = rg.answers[c]
    sections.append({
        "stem": "mediation_rag", "title": "Causal tracing with and without retrieved context", "numbers": nums,
        "command": None, "results": [d],
        "caption": (f"Average indirect effects over {rg.n_facts} Fakepedia fact(s) the model knows, with no "
                    f"context, a context stating the fact, and a Fakepedia counterfactual context "
                    f"({rg.settings['corrupt'].replace('+', ' + ')} corrupted, {rg.settings['samples']} noise "
                    f"sample(s), only the question's tokens traced).")})

    # 4. activation patching + AtP on the same pair
    d = result_dir(out_dir, "mediation_patching", quick)
    sites = ("resid_pre", "attn_out", "mlp_out")
    st = {"clean": PROMPT, "corrupt": CORRUPT, "sites": list(sites)}
    cmd = shlex.join(["interp", "patch", "--clean", PROMPT, "--corrupt", CORRUPT, "--sites", ",".join(sites),
                      "--atp", "--out", display_path(d)])
    pt = cached(PatchingResult, d, settings=st, model=model, command=cmd,
                compute=lambda: activation_patching(model, PROMPT, CORRUPT, sites=sites))
    at = cached(AttributionResult, d, settings=st, model=model, command=cmd,
                compute=lambda: attribution_patching(model, PROMPT, CORRUPT, sites=sites, answer=pt.answer,
                                                     wrong=pt.wrong))
    save_figure(pt.figure(), out_dir, "mediation_patching")
    rho = compare_with_patching(at, pt)
    nums = {f"clean_{pt.metric}": pt.clean_metric, f"corrupt_{pt.metric}": pt.corrupt_metric,
            **{f"atp_spearman_{s}": v for s, v in rho.items()}}
    sections.append({
        "stem": "mediation_patching", "title": f"Activation patching ({pt.direction}) and AtP", "numbers": nums,
        "command": cmd, "results": [d],
        "caption": (f"Normalised {pt.metric.replace('_', ' ')} ({pt.answer!r} vs {pt.wrong!r}) when one clean "
                    f"activation of {', '.join(pt.sites)} is patched into the corrupted run ({CORRUPT!r}); "
                    f"the Spearman correlation of attribution patching (AtP) with it per site is in the numbers.")})
    return sections
