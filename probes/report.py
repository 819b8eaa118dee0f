"""Figure-job section of probes: NQ-Swap probes (both tasks) and reliance scores on the model.

Results are kept with :func:`interp.results.cached` under ``<out>/results/probes_<name>/``
(``_quick`` in quick mode; ``probe.json``, ``labels.json``, ``reliance.json`` + safetensors), keyed
by their settings: a rerun only redraws.  The activation shards the computation needs are large
(every layer × component), so they go to ``$INTERP_PROBE_CACHE`` (default
``out/probes_report_acts``, git-ignored), not into figures/.

Settings: NQ-Swap from :func:`interp.datasets.data_dir`, 2 demonstrations (CPU budget; the paper
uses 4), contexts cut to 160 characters (80 for demonstrations).  quick: 30 rows, 3 seeds,
reliance on ≤ 6 examples per class; full: 130 rows, 5 seeds, ≤ 40 per class, plus the conflict
task on **conflicts the model's memory contradicts** (issue 10): facts pooled from known_1000, the
LRE factual relations of :data:`KNOWN_FACT_FILES` and Fakepedia, kept only when the model answers
them closed-book (``first_token`` rule, at most :data:`PER_RELATION` per file and relation; see
:mod:`probes.known`).  That run scans ~3,400 facts and probes every layer: hours on 2 shared CPU
cores, so it is made with the ``interp probe`` command its entry prints (resumable) and its result
committed; the figure job then only redraws it.  The full job also draws both conflict datasets
side by side (Zhao et al.'s Fig. 2) with the comparison to their numbers
(:func:`zhao_comparison`).  Captions are read from the results.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

NQ_FILE = "nq_swap/nqswap_merged.jsonl.gz"
#: the pooled fact sources of the known-facts conflicts (relative to the data directory).  LRE: the
#: factual relations scanned so far; left out: landmark_on_continent (5 objects, guessable) and the
#: person_* / product / star / superhero / pokemon / president relations (not yet scanned: ~7,600
#: more facts; the scan resumes when they are added)
KNOWN_FACT_FILES = ("known_1000/known_1000.json",
                    *(f"lre_relations/data/factual/{r}.json" for r in (
                        "city_in_country", "company_ceo", "company_hq", "country_capital_city", "country_currency",
                        "country_language", "country_largest_city", "food_from_country", "landmark_in_country")),
                    "fakepedia/base_fakepedia_subset_slim.jsonl")
#: known rule and per-(file, relation) cap of the known-facts conflicts
KNOWN_RULE, PER_RELATION = "first_token", 10
TASK_CAPTIONS = {"conflict": "Task: original vs substituted NQ-Swap context.",
                 "source": "Task: the model answers with the context's object vs its memorised answer.",
                 "conflict_known_facts": "Task: a fact the model answers closed-book stated vs a substitute "
                                         "stated (same relation, or Fakepedia's counterfactual), cloze prompts."}


#: what Zhao et al. (2024) report for 7-8B models (../shared/METHODS.md)
ZHAO = {"accuracy": 0.90, "where": "middle layers", "components": "residual and MLP at least as good as attention"}


def _settings(quick: bool) -> dict:
    return {"limit": 30 if quick else 130, "n_seeds": 3 if quick else 5, "n_demos": 2, "max_chars": 160,
            "demo_chars": 80, "per_class": 6 if quick else 40}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def zhao_comparison(facts, nq=None) -> dict:
    """What holds on this model of Zhao et al.'s reported shape, computed from the results.

    Returns ``{"claims": {name: bool}, "text": str}``: the best probe's accuracy vs their ~90%,
    whether it peaks in the middle third of the layers, whether the residual stream and the MLP
    are at least as good as attention at their best layers (means, with whether the intervals
    overlap), and how many layers beat chance.
    """
    from .result import peak_shape

    sh = peak_shape(facts)
    best_c = max(sh, key=lambda c: sh[c]["accuracy"])
    b = sh[best_c]
    L = len(facts.layers)
    claims = {"near_90": b["accuracy"] >= ZHAO["accuracy"] - 0.05, "peak_middle_third": b["middle_third"],
              "above_chance": b["ci"][0] > 0.5}
    parts = [f"Zhao et al. (2024) report ~{ZHAO['accuracy']:.0%} conflict-detection accuracy in the "
             f"{ZHAO['where']} of 7–8B models, {ZHAO['components']}. Here ({facts.model}, {L} layers), on "
             f"{facts.class_counts.get('n_examples')} known-fact conflicts the best probe is {best_c} at layer "
             f"{b['layer']} (relative depth {b['depth']:.2f}, {'inside' if b['middle_third'] else 'outside'} the "
             f"middle third) with {_pct(b['accuracy'])} [{_pct(b['ci'][0])}, {_pct(b['ci'][1])}] — "
             + ("close to" if claims["near_90"] else "below") + f" their ~{ZHAO['accuracy']:.0%}."]
    if "attn" in sh:
        a = sh["attn"]
        for c in ("resid", "mlp"):
            if c in sh:
                ge = sh[c]["accuracy"] >= a["accuracy"]
                overlap = sh[c]["ci"][0] <= a["ci"][1] and a["ci"][0] <= sh[c]["ci"][1]
                claims[f"{c}_ge_attn"] = ge
                parts.append(f"{c} peaks at {_pct(sh[c]['accuracy'])} (layer {sh[c]['layer']}) vs attention "
                             f"{_pct(a['accuracy'])} (layer {a['layer']}): "
                             + ("at least as good, as in the paper" if ge else "below attention, unlike the paper")
                             + (" (intervals overlap)." if overlap else " (intervals disjoint)."))
    parts.append("Layers whose whole interval lies above chance: " + ", ".join(
        f"{c} {v['layers_above_chance']}/{L}" for c, v in sh.items()) + ".")
    if nq is not None:
        shn = peak_shape(nq)
        bn_c = max(shn, key=lambda c: shn[c]["accuracy"])
        bn = shn[bn_c]
        beh = nq.class_counts.get("behaviour", {})
        claims["nq_above_chance"] = bn["ci"][0] > 0.5
        parts.append(f"On NQ-Swap (every example; the model answers {beh.get('known_closed_book', '?')} of "
                     f"{beh.get('n', '?')} closed-book) the best probe is {bn_c} at layer {bn['layer']} with "
                     f"{_pct(bn['accuracy'])} [{_pct(bn['ci'][0])}, {_pct(bn['ci'][1])}]"
                     + (", above chance." if claims["nq_above_chance"] else ", not distinguishable from chance."))
    return {"claims": claims, "text": " ".join(parts), "shape": sh}


def _source_counts(res) -> dict:
    """``{source: "kept / known / scanned"}``, the files of one directory (LRE relations) pooled into one line
    (each file's own counts are in the result's ``class_counts["known_scan"]``)."""
    scan = res.class_counts.get("known_scan", {}).get("counts", {})
    dirs = {}
    for origin in scan:
        dirs.setdefault(origin.rsplit("/", 1)[0], []).append(origin)
    pooled: dict[str, list[int]] = {}
    for origin, c in scan.items():
        d = origin.rsplit("/", 1)[0]
        key = f"{d}/ ({len(dirs[d])} files)" if len(dirs[d]) > 1 else origin
        t = pooled.setdefault(key, [0, 0, 0])
        for i, k in enumerate(("kept", "known", "scanned")):
            t[i] += c[k]
    return {k: f"{a} / {b} / {c}" for k, (a, b, c) in pooled.items()}


def _ci(v: float, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _zhao_entry(out_dir: Path, facts, nq, rdirs: list) -> dict:
    """Zhao et al.'s Fig. 2 on both conflict datasets, with the comparison computed from the results and
    the known-facts accuracy of every layer × component (mean [95% CI]; the random-label control)."""
    from interp.figures import save_figure

    from .result import conflict_figure, peak_shape

    fig = conflict_figure({"known facts (memory contradicted)": facts, "NQ-Swap (every example)": nq})
    save_figure(fig, out_dir, "probe_conflict_zhao")
    cmp = zhao_comparison(facts, nq)
    nums = {"Zhao et al. (2024), 7–8B": f"~{ZHAO['accuracy']:.0%} in the {ZHAO['where']}; {ZHAO['components']}",
            "known facts: examples / rows": f"{facts.class_counts['n_examples']} / {facts.class_counts['n_rows']}",
            "NQ-Swap: examples / rows": f"{nq.class_counts['n_examples']} / {nq.class_counts['n_rows']}"}
    for ds, r in (("known facts", facts), ("NQ-Swap", nq)):
        for comp, v in peak_shape(r).items():
            ctl = r.components[comp].get("control_accuracy")
            k = r.layers.index(v["layer"])
            nums[f"{ds}: {comp} peak (layer, acc [95% CI], control)"] = (
                f"{v['layer']}, {_ci(v['accuracy'], v['ci'])}, {ctl[k]:.3f}" if ctl else f"{v['layer']}, "
                f"{_ci(v['accuracy'], v['ci'])}")
    nums.update({f"claim: {k}": v for k, v in cmp["claims"].items()})
    for k, layer in enumerate(facts.layers):
        nums[f"known facts, layer {layer}"] = " · ".join(
            f"{c} {_ci(d['accuracy'][k], d['accuracy_ci'][k])}" for c, d in facts.components.items())
    return {"stem": "probe_conflict_zhao", "title": "Conflict probes on two datasets, next to Zhao et al. (2024)",
            "numbers": nums, "command": None, "results": rdirs,
            "caption": (f"Conflict-detection probes per layer × component (mean and 95% CI over "
                        f"{facts.n_seeds} grouped splits; dashed: chance) on the conflicts the model's memory "
                        f"contradicts and on NQ-Swap. " + cmp["text"])}


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """NQ-Swap probe accuracy vs layer (Zhao et al. 2024) and PKS / ECS (ReDeEP) of context- vs memory-answers."""
    from interp.datasets import data_dir, display_path
    from interp.figures import save_figure
    from interp.results import cached, result_dir

    from .linear import ProbeLabelError
    from .pipeline import prepare, probe_dataset, spec_label
    from .reliance import RelianceResult, compare_reliance
    from .result import ProbeResult

    out_dir = Path(out_dir)
    s = _settings(quick)
    tag = "quick" if quick else "full"
    cache = Path(os.environ.get("INTERP_PROBE_CACHE", "out/probes_report_acts")) / tag
    dataset = f"nqswap:{display_path(data_dir() / NQ_FILE)}"
    redo = f"interp figures --only probes --out {display_path(out_dir)}" + (" --quick" if quick else "")
    entries = []
    runs = [("conflict", "conflict", dataset, s["limit"], cache, {}),
            ("source", "source", dataset, s["limit"], cache, {})]
    if not quick:  # conflicts with the model's memory: facts it answers closed-book (module note)
        facts = "facts:" + ",".join(display_path(data_dir() / f) for f in KNOWN_FACT_FILES)
        runs.append(("conflict_known_facts", "conflict", facts, None, cache.parent / "known_facts_full",
                     {"known": KNOWN_RULE, "per_relation": PER_RELATION}))
    results = {}
    for name, task, ds, limit, cdir, kn in runs:
        rdir = result_dir(out_dir, f"probes_{name}", quick)
        st = {"dataset": spec_label(ds), "task": task, "limit": limit,
              **{k: s[k] for k in ("n_seeds", "n_demos", "max_chars", "demo_chars")}, **kn}
        cmd = shlex.join(["interp", "probe", "--dataset", ds, "--task", task,
                          *(["--limit", str(limit)] if limit is not None else []),
                          *(["--known", kn["known"], "--per-relation", str(kn["per_relation"])] if kn else []),
                          "--seeds", str(s["n_seeds"]), "--demos", str(s["n_demos"]), "--max-chars",
                          str(s["max_chars"]), "--demo-chars", str(s["demo_chars"]), "--cache", display_path(cdir),
                          "--out", display_path(rdir)])
        res, err = None, None
        err_path = rdir / "error.json"
        if err_path.exists() and json.loads(err_path.read_text()).get("settings") == st:
            err = json.loads(err_path.read_text())
        else:
            try:
                res = cached(ProbeResult, rdir, settings=st, model=model, command=cmd, compute=lambda ds=ds, task=task,
                             limit=limit, cdir=cdir, rdir=rdir, kn=kn: probe_dataset(
                                 model, ds, rdir, task=task, limit=limit, n_seeds=s["n_seeds"], n_demos=s["n_demos"],
                                 max_chars=s["max_chars"], demo_chars=s["demo_chars"], cache_dir=cdir, progress=False,
                                 **kn))
            except ProbeLabelError as e:  # e.g. no memory-answer example: report, do not crash the job
                counts = json.loads((rdir / "labels.json").read_text())["labels"]["counts"]
                err = {"error": str(e), "counts": counts, "settings": st}
                err_path.write_text(json.dumps(err, indent=1))
        if res is None:
            entries.append({"stem": f"probe_accuracy_{name}", "title": f"Probe ({name}): not computable",
                            "numbers": {"behaviour counts": err["counts"]}, "command": cmd, "results": [rdir],
                            "caption": f"No figure: {err['error'][:300]}"})
            continue
        results[name] = res
        stem = f"probe_accuracy_{name}"
        save_figure(res.figure(), out_dir, stem)
        b = res.best
        nums = {"rows": res.class_counts["n_rows"], "class counts (1/0)":
                f"{res.class_counts['class_1']}/{res.class_counts['class_0']}",
                "best": f"{b['component']} layer {b['layer']}",
                "best accuracy [95% CI]": f"{b['accuracy']:.3f} [{b['accuracy_ci'][0]:.3f}, {b['accuracy_ci'][1]:.3f}]",
                "best AUROC": round(b["auroc"], 3), "control accuracy at best": round(b["control_accuracy"], 3),
                "majority baseline": round(res.baselines["majority"], 3)}
        for comp, d in res.components.items():
            k = max(range(len(d["accuracy"])), key=d["accuracy"].__getitem__)
            nums[f"{comp}: best layer / acc"] = f"{res.layers[k]} / {d['accuracy'][k]:.3f}"
        if task == "source":
            nums["behaviour counts"] = res.class_counts["behaviour"]
        if kn:
            nums["examples (conflicts the model's memory contradicts)"] = res.class_counts["n_examples"]
            for src, c in _source_counts(res).items():
                nums[f"{src}: kept / known / scanned"] = c
        from interp.arch import COMPONENTS
        comps = ", ".join(COMPONENTS.get(c, c) for c in res.components)
        entries.append({
            "stem": stem, "title": f"Knowledge-conflict probe accuracy vs layer ({name})", "numbers": nums,
            "command": cmd, "results": [rdir],
            "caption": (f"Test accuracy of L1/L2 logistic probes on last-token activations of each of "
                        f"{len(res.layers)} layers ({comps}), mean and 95% CI over {res.settings.get('n_seeds')} "
                        f"grouped splits, {res.class_counts['n_rows']} rows; dotted: random-label control; "
                        f"dashed: majority baseline. " + TASK_CAPTIONS[name])})
    if "conflict_known_facts" in results and "conflict" in results:
        entries.append(_zhao_entry(out_dir, results["conflict_known_facts"], results["conflict"],
                                   [result_dir(out_dir, f"probes_{n}", quick) for n in ("conflict_known_facts",
                                                                                         "conflict")]))
    # reliance scores
    rdir = result_dir(out_dir, "probes_reliance", quick)
    st = {"dataset": spec_label(dataset), "limit": s["limit"], "per_class": s["per_class"],
          **{k: s[k] for k in ("n_demos", "max_chars", "demo_chars")}}

    def compute_reliance():
        ps, _, labels, _ = prepare(model, dataset, result_dir(out_dir, "probes_source", quick), limit=s["limit"],
                                   n_demos=s["n_demos"], max_chars=s["max_chars"], demo_chars=s["demo_chars"],
                                   cache_dir=cache, progress=False)
        pick = {"context": [], "memory": []}
        for i, lab in enumerate(labels.source):
            if lab in pick and len(pick[lab]) < s["per_class"]:
                pick[lab].append(i)
        idx = sorted(pick["context"] + pick["memory"])
        return compare_reliance(model, [ps.sub[i] for i in idx], [ps.sub_contexts[i] for i in idx],
                                [labels.source[i] for i in idx], dataset=spec_label(dataset))

    rel = cached(RelianceResult, rdir, settings=st, model=model, command=redo, compute=compute_reliance)
    save_figure(rel.figure(), out_dir, "probe_reliance_pks")
    save_figure(rel.figure_ecs(), out_dir, "probe_reliance_ecs")
    c = rel.comparison
    nums = {"context / memory examples": f"{c['pks_late_sum'].get('n_context')}/{c['pks_late_sum'].get('n_memory')}"}
    for key in ("pks_late_sum", "ecs_mean"):
        d = c[key]
        if "mean_context" in d:
            nums[f"{key}: mean context / memory"] = f"{d['mean_context']:.4f} / {d['mean_memory']:.4f}"
            nums[f"{key}: AUROC, Mann-Whitney p"] = f"{d['auroc_context_vs_memory']:.3f}, {d['mannwhitney_p']:.3g}"
    nums["LFD layer (least FFN change, late half)"] = c.get("lfd_layer_least_change")
    n_ctx, n_mem = c["pks_late_sum"].get("n_context"), c["pks_late_sum"].get("n_memory")
    entries.append({"stem": "probe_reliance_pks", "title": "Parametric knowledge score (ReDeEP/LFD) per layer",
                    "numbers": nums, "command": None, "results": [rdir],
                    "caption": (f"{'Jensen–Shannon divergence' if rel.variant == 'jsd' else rel.variant} between "
                                f"the logit-lens distributions before and after each MLP at the last token, for "
                                f"{n_ctx} conflict prompts the model answered from the context vs {n_mem} from "
                                f"memory.")})
    entries.append({"stem": "probe_reliance_ecs", "title": "External context score (ReDeEP) per head",
                    "numbers": {k: v for k, v in nums.items() if k.startswith(("ecs", "context"))}, "command": None,
                    "results": [rdir],
                    "caption": (f"Cosine between the last token's final hidden state and the mean final hidden state "
                                f"of each head's top-{rel.top_frac:.0%} attended context tokens: context-answer minus "
                                f"memory-answer ({n_ctx} / {n_mem} prompts).")})
    return entries
