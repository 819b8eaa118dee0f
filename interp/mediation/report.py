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
#: The RAG comparison of the full job: 100 known facts, 3 noise samples, no scan limit.  Fakepedia
#: holds 95 facts the default model knows; the rest come from known_1000 with same-relation object
#: swaps as counterfactuals (``rag_comparison(fill_from=)``).
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
    from .rag import RagComparisonResult, rag_comparison, source_phrase

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
        "caption": (f"ROME's average indirect effect by token category and layer over "
                    + (f"all {sw.n_known}" if sw.n_traced == sw.n_known else f"{sw.n_traced} of the {sw.n_known}")
                    + f" facts the model knows among the first {sw.n_scanned} rows (known: "
                    f"{sw.settings.get('known_rule', 'clean top-1 == attribute')}), {sw.settings['samples']} "
                    f"noise sample(s) each, {sw.settings['window']}-layer windows; standard errors in the hover."
                    + (f" The sweep covers {sw.n_traced} of {sw.n_known} known facts so far; the command "
                       f"resumes it." if not quick and sw.n_traced + len(sw.errors) < sw.n_known else ""))})
    if not quick and (d / "items.jsonl").is_file():
        sections.append(_significance_entry(d, out_dir))

    # 3. the RAG condition (Wadhwa et al. 2024)
    d = result_dir(out_dir, "rag_comparison", quick)
    if quick:
        st = dict(n_facts=1, samples=1, scan=40)
        rg = cached(RagComparisonResult, d, settings={"dataset": FAKEPEDIA, **st}, model=model,
                    command=f"interp figures --only mediation --out {display_path(out_dir)} --quick",
                    compute=lambda: rag_comparison(model, data_dir() / FAKEPEDIA, **st))
    else:  # >= 100 known facts (Fakepedia, then known_1000 swaps): its own resumable command (`make paper`)
        st = dict(PAPER_RAG)
        fill = data_dir() / KNOWN_1000
        cmd = shlex.join(["interp", "rag", "--n-facts", str(st["n_facts"]), "--samples", str(st["samples"]),
                          "--fill-from", display_path(fill), "--out", display_path(d)])
        rg = cached_sweep(RagComparisonResult, d, settings={**{k: st[k] for k in ("samples", "scan", "window")},
                                                            "fill_from": fill.name},
                          model=model, command=cmd,
                          compute=lambda: rag_comparison(model, data_dir() / FAKEPEDIA, d, progress=True,
                                                         fill_from=fill, **st))
    save_figure(rg.figure(), out_dir, "mediation_rag")
    nums = {"facts": rg.n_facts, "sources": source_phrase(rg)}
    want = min(st["n_facts"] or rg.settings["n_known"], rg.settings["n_known"])
    for c, s in rg.summary.items():
        for kind, cat in (("mlp", "last_subject"), ("resid", "last_subject"), ("attn", "last")):
            key = f"{kind}_{cat}_peak"
            if key in s:
                nums[f"{c}:{key}"] = s[key]
                layer = s.get(f"{key}_layer")
                se = rg.se.get(c, {}).get(kind, {}).get(cat) if layer is not None else None
                if se and se[layer] is not None:
                    nums[f"{c}:{key} (± s.e., layer)"] = f"{s[key]:.3f} ± {se[layer]:.3f} at layer {layer}"
        nums[f"{c}:answers"] = rg.answers[c]
    for src, by_c in rg.by_source.items():   # each source alone: does pooling hide a difference?
        for c, s in by_c.items():
            if {"mlp_last_subject_peak", "resid_last_subject_peak", "attn_last_peak"} <= set(s):
                nums[f"{src} only ({rg.sources.get(src)} facts), {c}: mlp / resid last subject, attn last peaks"] = (
                    f"{s['mlp_last_subject_peak']:.3f} / {s['resid_last_subject_peak']:.3f} / "
                    f"{s['attn_last_peak']:.3f}")
    sections.append({
        "stem": "mediation_rag", "title": "Causal tracing with and without retrieved context", "numbers": nums,
        "command": None if quick else cmd, "results": [d],
        "caption": (f"Average indirect effects over {rg.n_facts} fact(s) the model knows "
                    f"({source_phrase(rg)}; each fact once, a Fakepedia fact with its first counterfactual "
                    f"paragraph, a swapped one with \"{{question}} {{another object of its relation}}.\"), with no "
                    f"context, a context stating the fact, and a counterfactual context "
                    f"({rg.settings['corrupt'].replace('+', ' + ')} corrupted, {rg.settings['samples']} noise "
                    f"sample(s), only the question's tokens traced)."
                    + (f" The comparison covers {rg.n_facts} of the {want} facts it asks for so far "
                       f"({rg.settings['n_known']} known of {rg.settings['n_scanned']}); the command resumes it."
                       if not quick and rg.n_facts < want else ""))})

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
    if not quick:
        sections += method_entries(out_dir)
    return sections


def _significance_entry(d: Path, out_dir: Path) -> dict:
    """The trace sweep again, from its log with per-cell statistics over facts (bootstrap 95% CIs,
    sign-flip p-values, maxT over the whole grid): cells whose AIE is not significant are blank."""
    from ..datasets import display_path
    from ..figures import save_figure
    from .causal_trace import trace_sweep_from_log

    sig = trace_sweep_from_log(d)
    save_figure(sig.figure(mask_nonsignificant=True), out_dir, "mediation_trace_sweep_significant")
    t = sig.stats["settings"]
    nums = {"facts": sig.n_traced,
            "test": (f"{t['test']}, {t['n_perm']} permutations, {t['correction']} over {t['n_cells']} cells, "
                     f"α = {t['alpha']}; {t['ci']} ({t['n_boot']} resamples)")}
    for k in sig.kinds:
        n_sig = sum(sum(sig.significant(k, c)) for c in sig.categories)
        nums[f"{k}: significant cells"] = f"{n_sig} of {len(sig.categories) * len(sig.layers)}"
        st = sig.stats[k]["last_subject"]
        curve = sig.aie[k]["last_subject"]
        i = max(range(len(curve)), key=lambda i: curve[i] if curve[i] is not None else float("-inf"))
        nums[f"{k}: peak at the last subject token, AIE [95% CI], p_adj"] = (
            f"{curve[i]:.3f} [{st['ci_low'][i]:.3f}, {st['ci_high'][i]:.3f}] at layer {sig.layers[i]}, "
            f"p_adj {st['p_adj'][i]:.3g}")
    cmd = f"interp trace --from-log {display_path(d)} --mask-nonsignificant --out out/trace_sweep_significant"
    return {"stem": "mediation_trace_sweep_significant", "title": "Average indirect effect on known_1000: significant cells",
            "numbers": nums, "command": cmd, "results": [d],
            "caption": (f"The sweep above over its {sig.n_traced} facts with per-cell statistics over facts "
                        f"(interp.stats.cell_stats): cells whose mean AIE is not different from 0 after the "
                        f"grid-wide correction are blank; the 95% CIs are in the numbers and the hover.")}


#: results of the two method validations (Kramár et al. 2024; Wang et al. 2022), made by their
#: resumable benchmark scripts (≈40 min and ≈20 min on 2 CPU cores) and committed in figures/results
ATP_STAR_COMMAND = ".venv/bin/python benchmarks/atp_star_validation.py --pairs 20 --out figures/results/atp_star_validation"
IOI_COMMAND = ".venv/bin/python benchmarks/path_patching_ioi.py --out figures/results/path_patching_ioi"


def _sender_name(sender) -> str:
    """``["head", 23, 3]`` → ``L23H3``; ``["mlp", 12, None]`` → ``MLP L12``."""
    kind, layer, *head = sender
    return f"L{layer}H{head[0]}" if kind == "head" else f"MLP L{layer}"


def _ioi_entry(sm: dict, stem: str, command: str, d: Path) -> dict:
    """REPORT entry of one IOI path-patching run (to the logits, or into a head's queries / keys / values)."""
    nums = {"IOI prompts (each vs an ABC corruption)": sm["prompts"],
            "mean clean / corrupt logit diff (IO − S)": f"{sm['mean_clean_logit_diff']:.2f} / "
                                                       f"{sm['mean_corrupt_logit_diff']:.2f}",
            "senders significant after maxT (p_adj < 0.05)": sm["n_significant"]}
    for t in sm["significant"]:
        nums[f"sender {_sender_name(t['sender'])}: mean normalised effect [95% CI], p_adj"] = (
            f"{t['mean']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], p_adj {t['p_adj']:.3g}")
    for key, label in (("strongest_positive", "largest positive"), ("strongest_negative", "largest negative")):
        if sm.get(key):   # what the grid shows even where nothing survives the correction
            nums[f"{label} mean effects (p_adj)"] = ", ".join(
                f"{_sender_name(t['sender'])} {t['mean']:+.3f} ({t['p_adj']:.2g})" for t in sm[key][:3])
    to = sm.get("receiver", "the logits")
    if to == "the logits":
        title = "Name movers: path patching from every head and MLP to the logits"
        what = ("each head's and MLP's direct path to the logits patched from an ABC run (noising), as a "
                "fraction of the clean → corrupt logit-difference change (mean over prompts; * = p_adj < 0.05 "
                "after maxT; the significant senders in the numbers: positive = a name mover, "
                "negative = a negative name mover)")
    else:
        title = f"Into a name mover: path patching from every earlier head and MLP to {to.split(' (')[0]}"
        what = (f"each earlier head's and MLP's path into {to} patched from an ABC "
                f"run (noising; heads between sender and receiver frozen), as a fraction of the clean → corrupt "
                f"logit-difference change (mean over prompts; * = p_adj < 0.05 after maxT). "
                + ("Queries: the senders that tell the name mover where to look (Wang et al.'s S-inhibition heads)"
                   if to.startswith("attn_q") else
                   "Keys: the senders that make a position look like the one to attend to" if to.startswith("attn_k")
                   else "Values: the senders whose output the name mover copies forward")
                + ("" if to.startswith("attn_q") else
                   " (with grouped-query attention a KV head serves several query heads: the path reaches them all)"))
    return {"stem": stem, "title": title, "numbers": nums, "command": command, "results": [d],
            "caption": (f"Wang et al. 2022's name-mover experiment on {sm['prompts']} indirect-object prompts"
                        f"{'' if to == 'the logits' else ', one step upstream'}: {what}. The figure is drawn by the "
                        f"benchmark command.")}


def _cell_name(c: dict) -> str:
    """A patching cell of the AtP* validation as "site L<layer>[H<head>] position <t>"."""
    return f"{c['site']} L{c['layer']}" + (f"H{c['head']}" if "head" in c else "") + f" position {c['position']}"


def method_entries(out_dir: Path) -> list[dict]:
    """REPORT entries of AtP vs AtP* vs real patching and of the name-mover path patching, read from
    the results their benchmark scripts saved under ``out_dir/results`` (skipped, with a line naming
    the command, when a result is not there)."""
    import json

    from ..figures import save_figure
    from .atp_validation import AttributionValidationResult
    from .attribution import METHOD_TITLES

    out_dir = Path(out_dir)
    entries = []
    d = out_dir / "results" / "atp_star_validation"
    if (d / f"{AttributionValidationResult.stem}.json").exists():
        res = AttributionValidationResult.load(d)
        save_figure(res.figure(), out_dir, "atp_star_validation")
        nums = {"prompt pairs": res.n_pairs, "cells per pair (all sites)": res.n_cells}
        for m in res.methods:
            per = res.spearman["magnitude"][m]["per_site"]
            nums[f"Spearman |estimate| vs |effect|, {METHOD_TITLES[m]}"] = ", ".join(
                f"{s} {v['mean']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]" for s, v in per.items())
        for m in res.methods:
            nums[f"real patches to recall the top 10 effects, {METHOD_TITLES[m]}"] = round(res.cost[m]["mean"][9], 1)
        nums["seconds, real patching / AtP / AtP*"] = " / ".join(
            f"{res.seconds.get(k, float('nan')):.0f}" for k in ("patching", "atp", "atp*"))
        if res.qk_cells:
            c = res.qk_cells[0]
            cell = _cell_name(c)
            nums["cell the QK fix corrects most"] = (f"{cell} of {c['clean']!r}: effect {c['effect']:+.3f}, "
                                                     f"AtP {c['atp']:+.3f}, AtP+QK {c['atp+qk']:+.3f}")
            # Kramár et al.'s failure: a saturated softmax makes AtP see almost nothing of a large effect
            missed = [c for c in res.qk_cells if abs(c["atp"]) < 0.1 * abs(c["effect"])
                      and abs(c["atp+qk"] - c["effect"]) < 0.5 * abs(c["effect"])]
            if missed:
                c = max(missed, key=lambda c: abs(c["effect"]))
                cell = _cell_name(c)
                nums["a large effect AtP misses and the QK fix recovers (through the attention pattern)"] = (
                    f"{cell} of {c['clean']!r}: effect {c['effect']:+.3f}, AtP {c['atp']:+.3f}, "
                    f"AtP+QK {c['atp+qk']:+.3f}, AtP* {c.get('atp*', float('nan')):+.3f}")
        entries.append({
            "stem": "atp_star_validation", "title": "AtP vs AtP* vs real activation patching", "numbers": nums,
            "command": ATP_STAR_COMMAND, "results": [d],
            "caption": (f"Kramár et al. 2024's evaluation over {res.n_pairs} known_1000 subject-swap pairs: the "
                        f"Spearman correlation of each attribution method's |estimate| with the |effect| of real "
                        f"patching per site ({', '.join(res.sites)}; mean over pairs, 95% bootstrap CI), the "
                        f"number of real patches needed to recover the top-k true effects when cells are visited in "
                        f"each method's order, and the cells the QK fix corrects most.")})
    else:
        print(f"[figures] mediation: no AtP* validation in {d}: {ATP_STAR_COMMAND}")
    # to the logits first, then the runs into a name mover's queries / keys / values (any saved)
    dirs = [out_dir / "results" / "path_patching_ioi"] + sorted((out_dir / "results").glob("path_patching_ioi_*"))
    for d in dirs:
        sm = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
        stem = (sm or {}).get("stem", "path_patching_ioi")
        command = (sm or {}).get("command", IOI_COMMAND)
        if sm is None or not (out_dir / f"{stem}.png").exists():
            print(f"[figures] mediation: no name-mover path patching in {d}: {command}")
            continue
        entries.append(_ioi_entry(sm, stem, command, d))
    return entries
