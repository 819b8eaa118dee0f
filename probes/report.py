"""Figure-job section of probes: NQ-Swap probes (both tasks) and reliance scores on the model.

Results are cached under ``<out>/results/probes_<name>/`` (``probe.json``, ``labels.json``,
``reliance.json`` + safetensors); a rerun only redraws from them.  The activation shards the
computation needs are large (every layer × component), so they go to
``$INTERP_PROBE_CACHE`` (default ``out/probes_report_acts``, git-ignored), not into figures/.

Settings: NQ-Swap from ``$INTERP_DATA`` (default ``../shared/data``), 2 demonstrations (CPU
budget; the paper uses 4), contexts cut to 160 characters (80 for demonstrations).
quick: 30 rows, 3 seeds, reliance on ≤ 6 examples per class (40 rows took 130 s at load ≈ 5);
full: 130 rows, 5 seeds, ≤ 40 per class, plus the conflict task on 200 known_1000 fact conflicts (``facts:`` builder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from interp.errors import ResultMissingError

NQ_FILE = "nq_swap/nqswap_merged.jsonl.gz"
FACTS_FILE = "known_1000/known_1000.json"


def _data_dir() -> Path:
    return Path(os.environ.get("INTERP_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _settings(quick: bool) -> dict:
    return {"limit": 30 if quick else 130, "n_seeds": 3 if quick else 5, "n_demos": 2, "max_chars": 160,
            "demo_chars": 80, "per_class": 6 if quick else 40}


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """NQ-Swap probe accuracy vs layer (conflict, source) and PKS / ECS of context- vs memory-answers."""
    from interp.figures import save_figure

    from .pipeline import prepare, probe_dataset
    from .linear import ProbeLabelError
    from .reliance import RelianceResult, compare_reliance
    from .result import ProbeResult

    out_dir = Path(out_dir)
    s = _settings(quick)
    tag = "quick" if quick else "full"
    cache = Path(os.environ.get("INTERP_PROBE_CACHE", "out/probes_report_acts")) / tag
    dataset = f"nqswap:{_data_dir() / NQ_FILE}"
    entries = []
    runs = [("conflict", "conflict", dataset, s["limit"], cache), ("source", "source", dataset, s["limit"], cache)]
    if not quick:  # fact conflicts the model partly knows (known_1000): short prompts, more rows
        runs.append(("conflict_known1000", "conflict", f"facts:{_data_dir() / FACTS_FILE}", 200,
                     cache.parent / "known1000_full"))
    for name, task, ds, limit, cdir in runs:
        rdir = out_dir / "results" / f"probes_{name}_{tag}"
        cmd = (f"interp probe --dataset {ds} --task {task} --limit {limit} --seeds {s['n_seeds']} "
               f"--demos {s['n_demos']} --cache {cdir} --out {rdir}")
        res, err = None, None
        if (rdir / "probe.json").exists():
            res = ProbeResult.load(rdir)
        elif (rdir / "error.json").exists():
            err = json.loads((rdir / "error.json").read_text())
        elif model is None:
            raise ResultMissingError(f"no saved probe result in {rdir}; make it with: {cmd}")
        else:
            try:
                res = probe_dataset(model, ds, rdir, task=task, limit=limit, n_seeds=s["n_seeds"],
                                    n_demos=s["n_demos"], max_chars=s["max_chars"], demo_chars=s["demo_chars"],
                                    cache_dir=cdir, progress=False)
            except ProbeLabelError as e:  # e.g. no memory-answer example: report, do not crash the job
                counts = json.loads((rdir / "labels.json").read_text())["labels"]["counts"]
                err = {"error": str(e), "counts": counts}
                (rdir / "error.json").write_text(json.dumps(err, indent=1))
        if res is None:
            entries.append({"stem": f"probe_accuracy_{name}", "title": f"Probe ({name}): not computable",
                            "numbers": {"behaviour counts": err["counts"]}, "command": cmd,
                            "caption": f"No figure: {err['error'][:300]}"})
            continue
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
        entries.append({
            "stem": stem, "title": f"Knowledge-conflict probe accuracy vs layer ({name})", "numbers": nums,
            "command": cmd,
            "caption": ("Test accuracy of L1/L2 logistic probes on last-token activations of each layer "
                        "(resid_post, mlp_out, attn_out), mean and 95% CI over grouped splits; dotted: "
                        "random-label control; dashed: majority baseline. "
                        + {"conflict": "Task: original vs substituted NQ-Swap context.",
                           "source": "Task: the model answers with the context's object vs its memorised answer.",
                           "conflict_known1000": "Task: a known_1000 fact stated vs a same-relation substitute "
                                                 "stated (cloze prompts)."}[name])})
    # reliance scores
    rdir = out_dir / "results" / f"probes_reliance_{tag}"
    cmd = f"interp figures --only probes --out {out_dir}" + (" --quick" if quick else "")
    if (rdir / "reliance.json").exists():
        rel = RelianceResult.load(rdir)
    elif model is None:
        raise ResultMissingError(f"no saved reliance result in {rdir}; make it with: {cmd}")
    else:
        ps, _, labels, _ = prepare(model, dataset, out_dir / "results" / f"probes_source_{tag}", limit=s["limit"],
                                   n_demos=s["n_demos"], max_chars=s["max_chars"], demo_chars=s["demo_chars"],
                                   cache_dir=cache, progress=False)
        pick = {"context": [], "memory": []}
        for i, lab in enumerate(labels.source):
            if lab in pick and len(pick[lab]) < s["per_class"]:
                pick[lab].append(i)
        idx = sorted(pick["context"] + pick["memory"])
        rel = compare_reliance(model, [ps.sub[i] for i in idx], [ps.sub_contexts[i] for i in idx],
                               [labels.source[i] for i in idx], dataset=dataset)
        rel.save(rdir)
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
    entries.append({"stem": "probe_reliance_pks", "title": "Parametric knowledge score (ReDeEP/LFD) per layer",
                    "numbers": nums, "command": cmd,
                    "caption": "JSD between the logit-lens distributions before and after each MLP at the last "
                               "token, for conflict prompts the model answered from the context vs from memory."})
    entries.append({"stem": "probe_reliance_ecs", "title": "External context score (ReDeEP) per head",
                    "numbers": {k: v for k, v in nums.items() if k.startswith(("ecs", "context"))}, "command": cmd,
                    "caption": "Cosine between the last token's final hidden state and the mean final hidden state "
                               "of each head's top-10% attended context tokens: context-answer minus memory-answer."})
    return entries
