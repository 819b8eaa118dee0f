"""Causal mediation: ROME causal tracing, activation patching, attribution patching, RAG.

Everything here compiles into :class:`interp.interventions.InterventionPlan` rows run by
``model.run`` — one row per counterfactual world, chunked, never one forward per cell:

* :func:`causal_trace` / :func:`trace_dataset` — ROME (Meng et al. 2022) causal tracing of one
  prompt or of a known_1000-style dataset (average indirect effect by ROME's token categories).
* :func:`activation_patching` — clean→corrupt (denoising) and corrupt→clean (noising) patching
  of residual / attention / MLP outputs, single heads and MLP neurons.
* :func:`attribution_patching` — AtP (Nanda 2023; Kramár et al. 2024) from one backward pass.
* :mod:`interp.mediation.rag` — the same methods with a retrieved context before the question
  (the prompt is :func:`interp.prompts.rag_prompt`).
"""

from .attribution import AttributionResult, attribution_patching, spearman
from .causal_trace import (CATEGORIES, CausalTraceResult, TraceSweepResult, causal_trace,
                           noise_level, trace_dataset)
from .patching import PatchingResult, activation_patching
from .rag import rag_comparison

__all__ = ["causal_trace", "CausalTraceResult", "trace_dataset", "TraceSweepResult", "noise_level",
           "CATEGORIES", "activation_patching", "PatchingResult", "attribution_patching",
           "AttributionResult", "spearman", "rag_comparison"]
