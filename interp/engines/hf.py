"""Plain Hugging Face forward with PyTorch module hooks: the reference engine.

Where each site lives (see :mod:`interp.arch` for the module names):

* ``resid_pre`` = input of block ``l``; ``resid_post`` = its output;
* ``attn_out`` = output[0] of the attention module, ``attn_pattern`` = its output[1] (eager);
* ``resid_mid`` = input of the second norm (read only here: writes are compiled into an
  ``attn_out`` edit by :mod:`interp.model`, because editing the norm's input would not change
  the residual that the block adds the MLP output to);
* ``mlp_post`` = input of the down-projection; ``mlp_out`` = output of the MLP;
* ``attn_z`` = input of the output projection, reshaped to heads;
* ``attn_q`` / ``attn_k`` / ``attn_v`` = output of the query / key / value projection, reshaped to
  heads (key and value: the KV heads of grouped-query attention); GPT-2's fused ``c_attn``
  output is split into its thirds (:data:`interp.arch.QKV_SITES` order);
* ``attn_scores`` = the additive attention mask passed to the attention module (blocking an
  edge there equals blocking its pre-softmax score).

It is the engine with every capability, including **work skipping** (:mod:`interp.skipping`):
its primitives call the Hugging Face modules themselves — the decoder layers with the keyword
arguments the model's own forward gave them (rotary or learned positions, the causal / sliding-
window masks the model built), the embedding, the final norm and LM head — never a re-written
attention.  The keys/values of the earlier positions reach a layer through a small cache object
with the ``update`` method Hugging Face attention calls.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import ExitStack, contextmanager
from typing import Mapping

import torch

from ..capabilities import EDIT_SCORES, GRADIENTS, LAST_LOGITS, SKIP_WORK, SWITCH_ATTENTION
from ..arch import QKV_SITES
from .base import Engine, HookFn, Point


def _keeps_logits(model) -> bool:
    """Whether the model's forward can skip unembedding all but the last positions."""
    return _forward_takes_logits_to_keep(type(model))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls) -> bool:
    import inspect
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    """Name under which this transformers version passes the cache ("cache" from 5.x)."""
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.lru_cache(maxsize=None)
def _recording_cache_class():
    from transformers import DynamicCache

    class RecordingCache(DynamicCache):
        """A ``DynamicCache`` that also keeps the full keys/values each layer attended over
        (a sliding-window layer keeps only its window for later steps; we need them all)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.kv: dict = {}

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            self.kv[layer_idx] = out
            return out

    return RecordingCache


class HFEngine(Engine):
    name = "hf"
    capabilities = frozenset({EDIT_SCORES, LAST_LOGITS, SWITCH_ATTENTION, GRADIENTS, SKIP_WORK})

    def __init__(self, hf_model, adapter):
        self.model = hf_model
        self.a = adapter
        self._block_sig = inspect.signature(adapter.blocks[0].forward)

    def _register(self, point: Point, fn: HookFn):
        site, layer = point
        a = self.a
        if site == "embed":
            return a.embed_module.register_forward_hook(lambda m, i, o: fn(o))
        if site == "resid_pre":
            def pre(m, args, kwargs):
                if args:
                    return (fn(args[0]),) + tuple(args[1:]), kwargs
                kwargs["hidden_states"] = fn(kwargs["hidden_states"])
                return args, kwargs
            return a.blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
        if site == "resid_post":
            return a.blocks[layer].register_forward_hook(lambda m, i, o: _replace_first(o, fn(_first(o))))
        if site == "attn_out":
            return a.attn[layer].register_forward_hook(lambda m, i, o: _replace_first(o, fn(o[0])))
        if site == "attn_pattern":
            def pat(m, i, o):
                if o[1] is None:
                    raise RuntimeError("attention weights are not returned: load with eager attention")
                return (o[0], fn(o[1])) + tuple(o[2:])
            return a.attn[layer].register_forward_hook(pat)
        if site == "resid_mid":
            return a.ln2[layer].register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
        if site == "mlp_post":
            return a.down[layer].register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
        if site == "mlp_out":
            return a.mlp[layer].register_forward_hook(lambda m, i, o: _replace_first(o, fn(_first(o))))
        if site == "attn_z":
            def z(m, args):
                x = args[0]
                h = fn(x.reshape(*x.shape[:-1], a.n_heads, a.d_head))
                return (h.reshape(x.shape),) + tuple(args[1:])
            return a.o_proj[layer].register_forward_pre_hook(z)
        if site in QKV_SITES:
            part = QKV_SITES.index(site)
            mod = a.qkv[layer][part]
            fused = a.layout.fused_qkv

            def proj(m, i, o):
                if fused:
                    d = o.shape[-1] // 3
                    x = o[..., part * d:(part + 1) * d]
                    h = fn(x.reshape(*x.shape[:-1], -1, a.d_head)).reshape(x.shape)
                    return torch.cat([o[..., :part * d], h, o[..., (part + 1) * d:]], -1)
                return fn(o.reshape(*o.shape[:-1], -1, a.d_head)).reshape(o.shape)
            return mod.register_forward_hook(proj)
        if site == "attn_scores":
            def sc(m, args, kwargs):
                kwargs["attention_mask"] = fn(kwargs["attention_mask"])
                return args, kwargs
            return a.attn[layer].register_forward_pre_hook(sc, with_kwargs=True)
        raise KeyError(site)

    @contextmanager
    def hooked(self, hooks: Mapping[Point, HookFn]):
        with ExitStack() as stack:
            for point, fn in hooks.items():
                stack.callback(self._register(point, fn).remove)
            yield

    def forward(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn],
                last_only: bool = False):
        extra = {"logits_to_keep": 1} if last_only and _keeps_logits(self.model) else {}
        with self.hooked(hooks):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False, **extra)
        return out.logits

    # ------------------------------------------------------------------ SKIP_WORK primitives
    def forward_capture(self, input_ids, attention_mask, position_ids, hooks):
        args: list = [None] * self.a.n_layers
        first = next(iter(self._block_sig.parameters))

        def grab(layer):
            def pre(module, a, kw):
                bound = self._block_sig.bind(*a, **kw).arguments
                out = {}
                for name, v in bound.items():
                    if name == first:
                        continue
                    if self._block_sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        out.update(v)
                    else:
                        out[name] = v
                args[layer] = out
            return pre

        cache = _recording_cache_class()(config=self.model.config)
        extra = {"logits_to_keep": 1} if _keeps_logits(self.model) else {}
        extra[_cache_kwarg(type(self.model))] = cache
        with ExitStack() as stack:
            for k, blk in enumerate(self.a.blocks):
                stack.callback(blk.register_forward_pre_hook(grab(k), with_kwargs=True).remove)
            with self.hooked(hooks):
                out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=True, **extra)
        kv = [cache.kv[k] for k in range(self.a.n_layers)]
        return out.logits[:, -1], kv, args

    def embed(self, input_ids, position_ids):
        return self.a.embed_input(input_ids, position_ids)

    def block(self, layer, hidden, args, cache):
        name = "cache" if "cache" in self._block_sig.parameters else "past_key_values"
        out = self.a.blocks[layer](hidden, **{**args, name: cache, "use_cache": True})
        return _first(out)

    def unembed(self, h, tokens=None):
        return self.a.unembed(h, tokens=tokens)
