"""Plain Hugging Face forward with PyTorch module hooks: the reference engine.

Where each site lives (see :mod:`interp.arch` for the module names):

* ``resid_pre`` = input of block ``l``; ``resid_post`` = its output;
* ``attn_out`` = output[0] of the attention module, ``attn_pattern`` = its output[1] (eager);
* ``resid_mid`` = input of the second norm (read only here: writes are compiled into an
  ``attn_out`` edit by :mod:`interp.model`, because editing the norm's input would not change
  the residual that the block adds the MLP output to);
* ``mlp_post`` = input of the down-projection; ``mlp_out`` = output of the MLP;
* ``attn_z`` = input of the output projection, reshaped to heads;
* ``attn_scores`` = the additive attention mask passed to the attention module (blocking an
  edge there equals blocking its pre-softmax score).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Mapping

import torch

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


class HFEngine(Engine):
    name = "hf"

    def __init__(self, hf_model, adapter):
        self.model = hf_model
        self.a = adapter

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
        if site == "attn_scores":
            def sc(m, args, kwargs):
                kwargs["attention_mask"] = fn(kwargs["attention_mask"])
                return args, kwargs
            return a.attn[layer].register_forward_pre_hook(sc, with_kwargs=True)
        raise KeyError(site)

    def forward(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn],
                last_only: bool = False):
        extra = {"logits_to_keep": 1} if last_only and _keeps_logits(self.model) else {}
        with ExitStack() as stack:
            for point, fn in hooks.items():
                stack.callback(self._register(point, fn).remove)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False, **extra)
        return out.logits
