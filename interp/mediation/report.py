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
#: ROME's causal-tracing settings (Meng et al. 2022, ``causal_trace.py``): the full figures job
#: traces every fact of known_1000 the model knows with them.
PAPER_TRACE = dict(kinds=["resid", "mlp", "attn"], window=10, samples=10, noise="3sd", seed=0, min_p=None,
                   window_convention="rome_code")
#: The RAG comparison of the full job: 100 known Fakepedia facts, 3 noise samples, no scan limit.
PAPER_RAG = dict(n_facts=100, samples=3, scan=None, window=10)


#: ROME's GPT-2 XL (48 layers) numbers for the same sweep (Meng et al. 2022, Fig. 2; ../shared/METHODS.md):
#: kind -> (AIE at the last subject token at its peak, peak layer); and p_clean / p_corrupt.
ROME_GPT2XL = {"layers": 48, "last_subject": {"resid": (0.087, 15), "mlp": (0.066, 17), "attn": (0.016, None)},
               "p_clean": 0.270, "p_corrupt": 0.0847}


def rome_comparison(sw) -> dict:
    """The sweep's AIE peak at the last subject token per kind (± s.e., n facts, relative depth)
    beside ROME's GPT-2 XL number, and the mean clean / corrupted probabilities beside ROME's."""
    ref = ROME_GPT2XL
    out = {"p_clean (ROME GPT-2 XL 27.0%)": f"{100 * sw.mean_p_clean:.1f}%",
           "p_corrupt (ROME GPT-2 XL 8.47%)": f"{100 * sw.mean_p_corrupt:.2f}%"}
    L = len(sw.layers)
    for k in sw.kinds:
        curve = sw.aie[k]["last_subject"]
        if not any(v is not None for v in curve):
            continue
        l = max((i for i, v in enumerate(curve) if v is not None), key=lambda i: curve[i])
        v, se = curve[l], sw.se[k]["last_subject"][l]
        r, rl = ref["last_subject"].get(k, (None, None))
        where = f"layer {rl}/{ref['layers']} = {rl / ref['layers']:.2f} of depth" if rl is not None else "peak"
        out[f"{k} AIE at the last subject token, peak (ROME GPT-2 XL {100 * r:.1f}%, {where})"] = (
            f"{100 * v:.1f}% ± {100 * (se or 0):.1f} at layer {l}/{L} = {l / L:.2f} of depth, "
            f"n={sw.n_facts.get('last_subject', 0)} facts")
    return out


def _max_cell(res, kind: str) -> tuple[int, int, float]:
    g = res.grid(kind, effect=True)
    flat = int(g.nan_to_num(-1e9).argmax())
    l, t = divmod(flat, g.shape[1])
    return l, t, float(g[l, t])


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of ROME's causal tracing (one prompt, a dataset, with / without context) and patching."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, cached_sweep, result_dir
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

    # 2. known_1000 sweep (ROME's average indirect effects).  Full: ROME's settings over every known
    # fact (hours on CPU: run by its own resumable command, `make paper`); quick: a few facts.
    d = result_dir(out_dir, "trace_sweep", quick)
    path = data_dir() / KNOWN_1000
    if quick:
        st = dict(limit=60, max_known=2, samples=1)
        cmd = shlex.join(["interp", "trace", "--dataset", display_path(path), "--limit", str(st["limit"]),
                          "--max-known", str(st["max_known"]), "--samples", str(st["samples"]), "--out",
                          display_path(d)])
        sw = cached(TraceSweepResult, d, settings={"dataset": KNOWN_1000, **st}, model=model, command=cmd,
                    compute=lambda: trace_dataset(model, path, d, progress=False, **st))
    else:
        st = dict(PAPER_TRACE)
        cmd = shlex.join(["interp", "trace", "--dataset", display_path(path), "--samples", str(st["samples"]),
                          "--window", str(st["window"]), "--kinds", ",".join(st["kinds"]), "--noise",
                          st["noise"], "--out", display_path(d)])
        sw = cached_sweep(TraceSweepResult, d, settings={"dataset": KNOWN_1000, **st, "limit": None},
                          model=model, command=cmd, compute=lambda: trace_dataset(model, path, d, **st))
    save_figure(sw.figure(), out_dir, "mediation_trace_sweep")
    nums = {"rows_scanned": sw.n_scanned, "known": sw.n_known, "traced": sw.n_traced,
            "mean_p_clean": sw.mean_p_clean, "mean_p_corrupt": sw.mean_p_corrupt}
    for k, pk in sw.peaks.items():
        nums[f"{k}_peak"] = f"AIE {pk['aie']:.3f} at {pk['category']}, layer {pk['layer']}"
    nums.update(rome_comparison(sw))
    sections.append({
        "stem": "mediation_trace_sweep", "title": "Average indirect effect on known_1000", "numbers": nums,
        "command": cmd, "results": [d],
        "caption": (f"ROME's average indirect effect by token category and layer over {sw.n_traced} of the "
                    f"{sw.n_known} facts the model knows among the first {sw.n_scanned} rows (known: "
                    f"{sw.settings.get('known_rule', 'clean top-1 == attribute')}), {sw.settings['samples']} "
                    f"noise sample(s) each, {sw.settings['window']}-layer windows; standard errors in the hover."
                    + (f" The sweep covers {sw.n_traced} of {sw.n_known} known facts so far; the command "
                       f"resumes it." if not quick and sw.n_traced + len(sw.errors) < sw.n_known else ""))})

    # 3. the RAG condition (Wadhwa et al. 2024)
    d = result_dir(out_dir, "rag_comparison", quick)
    if quick:
        st = dict(n_facts=1, samples=1, scan=40)
        rg = cached(RagComparisonResult, d, settings={"dataset": FAKEPEDIA, **st}, model=model,
                    command=f"interp figures --only mediation --out {display_path(out_dir)} --quick",
                    compute=lambda: rag_comparison(model, data_dir() / FAKEPEDIA, **st))
    else:  # >= 100 known Fakepedia facts: its own resumable command (`make paper`)
        st = dict(PAPER_RAG)
        cmd = shlex.join(["interp", "rag", "--n-facts", str(st["n_facts"]), "--samples", str(st["samples"]),
                          "--out", display_path(d)])
        rg = cached_sweep(RagComparisonResult, d, settings={k: st[k] for k in ("samples", "scan", "window")},
                          model=model, command=cmd,
                          compute=lambda: rag_comparison(model, data_dir() / FAKEPEDIA, d, progress=True, **st))
    save_figure(rg.figure(), out_dir, "mediation_rag")
    nums = {"facts": rg.n_facts}
    for c, s in rg.summary.items():
        for key in ("mlp_last_subject_peak", "resid_last_subject_peak", "attn_last_peak"):
            if key in s:
                nums[f"{c}:{key}"] = s[key]
        nums[f"{c}:answers"] = rg.answers[c]
    sections.append({
        "stem": "mediation_rag", "title": "Causal tracing with and without retrieved context", "numbers": nums,
        "command": None if quick else cmd, "results": [d],
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
