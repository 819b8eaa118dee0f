"""nnsight 0.8 engine: ``TransformersModel`` traces.

nnsight executes the body of a ``trace`` against the real forward pass, and each module's
``.input`` / ``.output`` can only be touched in the order the model computes them.  So the
hook points are sorted into execution order first (embedding, then per block: input, attention
inputs, output projection input, attention output, second norm input, down-projection input, MLP
output, block output) and each module is touched once.  All rows of a batch go through one
trace — one forward, never a trace per row.

Site mapping is the same as the ``hf`` engine's (see :mod:`interp.engines.hf`); ``attn_scores``
edits the ``attention_mask`` keyword the attention module receives.
"""

from __future__ import annotations

from typing import Mapping

from ..arch import SITE_ORDER
from ..capabilities import EDIT_SCORES, GRADIENTS, LAST_LOGITS, SWITCH_ATTENTION
from .base import Engine, HookFn, Point


class NNsightEngine(Engine):
    name = "nnsight"
    capabilities = frozenset({EDIT_SCORES, LAST_LOGITS, SWITCH_ATTENTION, GRADIENTS})

    def __init__(self, hf_model, tokenizer, adapter):
        from nnsight import TransformersModel

        self.a = adapter
        self.hf = hf_model
        self.nm = TransformersModel(hf_model, tokenizer=tokenizer)

    def _envoy(self, path: str):
        env = self.nm
        for part in path.split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    def forward(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn],
                last_only: bool = False):
        from .hf import _keeps_logits
        lay = self.a.layout
        points = sorted(hooks, key=lambda p: (-1, 0) if p[1] is None else (p[1], SITE_ORDER[p[0]]))
        steps = []
        for site, layer in points:
            blk = f"{lay.layers}.{layer}"
            path = {
                "embed": lay.embed, "resid_pre": blk, "resid_post": blk,
                "attn_scores": f"{blk}.{lay.attn}", "attn_z": f"{blk}.{lay.o_proj}",
                "attn_out": f"{blk}.{lay.attn}", "attn_pattern": f"{blk}.{lay.attn}",
                "resid_mid": f"{blk}.{lay.ln2}", "mlp_post": f"{blk}.{lay.down}",
                "mlp_out": f"{blk}.{lay.mlp}",
            }[site]
            steps.append((site, self._envoy(path), hooks[(site, layer)]))
        a = self.a
        extra = {"logits_to_keep": 1} if last_only and _keeps_logits(self.hf) else {}
        with self.nm.trace(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, use_cache=False, **extra):
            i = 0
            while i < len(steps):
                site, env, fn = steps[i]
                if site in ("attn_out", "attn_pattern"):
                    # both live in the attention module's output tuple: touch it once
                    out = env.output
                    o0, o1 = out[0], out[1]
                    while i < len(steps) and steps[i][1] is env and steps[i][0] in ("attn_out", "attn_pattern"):
                        if steps[i][0] == "attn_out":
                            o0 = steps[i][2](o0)
                        else:
                            o1 = steps[i][2](o1)
                        i += 1
                    env.output = (o0, o1) + tuple(out[2:])
                    continue
                if site == "embed" or site == "mlp_out":
                    env.output = fn(env.output)
                elif site == "resid_post":
                    out = env.output
                    env.output = (fn(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else fn(out)
                elif site in ("resid_pre", "resid_mid", "mlp_post"):
                    env.input = fn(env.input)
                elif site == "attn_z":
                    x = env.input
                    env.input = fn(x.reshape(*x.shape[:-1], a.n_heads, a.d_head)).reshape(x.shape)
                elif site == "attn_scores":
                    args, kwargs = env.inputs
                    kwargs = dict(kwargs)
                    kwargs["attention_mask"] = fn(kwargs["attention_mask"])
                    env.inputs = (args, kwargs)
                i += 1
            logits = self.nm.lm_head.output.save()
        return logits
