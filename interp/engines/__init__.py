"""Engines execute one forward pass with hook functions at named sites.

The contract (:class:`~interp.engines.base.Engine`) is deliberately small: given token ids, an
attention mask, position ids and a mapping ``(site, layer) -> fn``, run the model and return the
logits, calling ``fn(x)`` on each site's tensor in its canonical layout and using the tensor it
returns.  Everything else — caching, batched edits, derived sites, chunking — is written once in
:mod:`interp.model` on top of it, so the three engines can only differ in how they reach a site:

* ``hf`` — the plain Hugging Face model with PyTorch module hooks.  The reference and the
  fastest path (no wrapper), and the default.
* ``transformer_lens`` — TransformerLens 4.x ``TransformerBridge`` hook points.
* ``nnsight`` — nnsight 0.8 ``TransformersModel`` traces; with ``remote="local"`` / ``True`` the
  same traces as requests to NDIF (:mod:`interp.remote`).

Each engine is tested against the others for logits and every site (``tests/test_engines.py``).
"""

from .base import ENGINES, Engine, HookFn, Point

__all__ = ["ENGINES", "Engine", "HookFn", "Point", "make_engine"]


def make_engine(name: str, hf_model, tokenizer, adapter, **options) -> Engine:
    """The engine ``name`` on this model; ``options`` go to its constructor (the nnsight engine's
    ``remote=``)."""
    from ..errors import EngineError

    if options and name != "nnsight":
        raise EngineError(f"engine {name!r} takes no options ({', '.join(options)}); remote execution "
                          f"runs through engine 'nnsight'")

    if name == "hf":
        from .hf import HFEngine
        return HFEngine(hf_model, adapter)
    if name == "transformer_lens":
        from .tl import TLEngine
        return TLEngine(hf_model, tokenizer, adapter)
    if name == "nnsight":
        from .nns import NNsightEngine
        return NNsightEngine(hf_model, tokenizer, adapter, **options)
    raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
