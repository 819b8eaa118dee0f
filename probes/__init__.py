"""probes: knowledge-conflict probes on the residual stream, and RAG reliance scores.

Design note
-----------
Reference: Zhao et al. 2024, "Analysing the Residual Stream of Language Models Under Knowledge
Conflicts" (SpARE repo ``spare/kc_probing.py``); ReDeEP (Sun et al. 2025) and LFD for the
reliance scores.  The data path runs one way, one module per step::

    data.py      FORMAT:PATH → ConflictExample (question, original / substituted context+answer, group)
    known.py     keep the conflicts the model's memory contradicts (it answers them closed-book)
    prompts.py   few-shot "context / question / answer" prompts, contexts cut around the answer
    features.py  last-token resid_post / mlp_out / attn_out of every layer → interp.cache shards
    labels.py    the model's own behaviour: context answer / memory answer / neither
    splits.py    train/val/test grouped by question (or subject): no fact on two sides
    linear.py    batched L1/L2 logistic probes per layer × component, controls, saved probes
    result.py    ProbeResult (stable JSON, accuracy-vs-layer figure)
    reliance.py  PKS (JSD of the logit lens across each MLP) and ECS (per-head context copying)
    pipeline.py  the pipeline as a library (prepare, probe_dataset), resumable at every step
    cli.py       ``interp probe`` — parses flags, calls the pipeline, saves result + figure
    report.py    report_sections(model, out_dir, quick) for the figure job (known facts vs NQ-Swap)

Choices a user should know:

* Everything the model is *asked* is built on the engine-agnostic core: activations come from
  :func:`interp.cache.extract_activations` (batched ``model.run`` reads, resumable shards), the
  greedy answer from the last ``resid_post`` through ``adapter.unembed`` (no extra forward),
  steering through :class:`interp.interventions.InterventionPlan`.  So the three engines give
  the same features (tested).
* Labels compare the **first answer token**: one forward per prompt instead of generation.
* The probe solver fits every layer and every regularisation setting at once (FISTA, L1 or
  L2); it reaches scikit-learn's optimum (tested) without 240 separate solver calls.
* Intervals are over grouped splits (seeds); the control is a random-label-per-group probe.
* CPU budget: contexts are truncated around the answer sentence (see :mod:`probes.prompts`).
"""

from __future__ import annotations

_LAZY = {
    "load_conflicts": ("probes.data", "load_conflicts"),
    "load_nqswap": ("probes.data", "load_nqswap"),
    "load_conflictqa": ("probes.data", "load_conflictqa"),
    "build_fact_conflicts": ("probes.data", "build_fact_conflicts"),
    "known_conflicts": ("probes.known", "known_conflicts"),
    "build_prompts": ("probes.prompts", "build_prompts"),
    "extract_features": ("probes.features", "extract_features"),
    "source_labels": ("probes.labels", "source_labels"),
    "grouped_split": ("probes.splits", "grouped_split"),
    "LinearProbe": ("probes.linear", "LinearProbe"),
    "probe_layers": ("probes.linear", "probe_layers"),
    "ProbeLabelError": ("probes.linear", "ProbeLabelError"),
    "ProbeResult": ("probes.result", "ProbeResult"),
    "conflict_figure": ("probes.result", "conflict_figure"),
    "parametric_knowledge_score": ("probes.reliance", "parametric_knowledge_score"),
    "external_context_score": ("probes.reliance", "external_context_score"),
    "compare_reliance": ("probes.reliance", "compare_reliance"),
    "probe_dataset": ("probes.pipeline", "probe_dataset"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
