"""interp: mechanistic interpretability of language models — where a model keeps a fact, and
which source (context or memory) it answers from.

Quick start::

    import interp
    model = interp.load()                      # embedded SmolLM2-135M-Instruct, engine "hf"
    out = model.run("The Eiffel Tower is in the city of", reads="resid_post", positions=[-1])
    lens = interp.logit_lens(model, "The Eiffel Tower is in the city of")
    lens.figure().show()

Heavy imports (torch, transformers, engines) load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load": ("interp.loading", "load"),
    "DEFAULT_MODEL": ("interp.loading", "DEFAULT_MODEL"),
    "Model": ("interp.model", "Model"),
    "ModelAdapter": ("interp.arch", "ModelAdapter"),
    "SITES": ("interp.arch", "SITES"),
    "InterventionPlan": ("interp.interventions", "InterventionPlan"),
    "Edit": ("interp.interventions", "Edit"),
    "logit_lens": ("interp.lens", "logit_lens"),
    "LensResult": ("interp.lens", "LensResult"),
    "extract_activations": ("interp.cache", "extract_activations"),
    "ShardedActivations": ("interp.cache", "ShardedActivations"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
