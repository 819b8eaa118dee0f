"""nnsight 0.8 engine: ``TransformersModel`` traces, here or on NDIF (``remote=``).

nnsight executes the body of a ``trace`` against the real forward pass, and each module's
``.input`` / ``.output`` can only be touched in the order the model computes them.  So the
hook points are sorted into execution order first (embedding, then per block: input, attention
inputs, output projection input, attention output, second norm input, down-projection input, MLP
output, block output) and each module is touched once (:func:`interp.shipped.walk`).  All rows of
a batch go through one trace — one forward, never a trace per row.

Site mapping is the same as the ``hf`` engine's (see :mod:`interp.engines.hf`); ``attn_scores``
edits the ``attention_mask`` keyword the attention module receives.

**Remote execution** (``remote="local"`` or ``True``; see :mod:`interp.remote`).  A trace body
that runs on an NDIF server cannot call interp's hook closures: the server has no interp.  So a
remote engine does not take hooks; :meth:`NNsightEngine.run_plan` sends the *compiled plan as
data* (edit index tensors and values, the points to read, the columns to keep, the reduction to
apply) and the torch-only program :func:`interp.shipped.run_chunk`, shipped by value, applies it
inside the trace.  The chunks of rows of one ``Model.run`` go out in as few requests as possible:
one nnsight ``session`` per group of chunks (``request_rows`` rows), each chunk one trace in it.
Only what was asked for comes back: the reduced logits (``logits=fn``), the kept columns of the
reads, or a method's reduction (``reduce=``) computed on the server from the server's weights.
"""

from __future__ import annotations

from typing import Mapping

from ..arch import QKV_SITES, SITE_ORDER
from ..capabilities import EDIT_SCORES, GRADIENTS, LAST_LOGITS, REMOTE, SWITCH_ATTENTION
from ..shipped import walk
from .base import Engine, HookFn, Point


class NNsightEngine(Engine):
    name = "nnsight"
    capabilities = frozenset({EDIT_SCORES, LAST_LOGITS, SWITCH_ATTENTION, GRADIENTS})

    def __init__(self, hf_model, tokenizer, adapter, *, remote=False, server_model=None, nnsight_model=None):
        """``hf_model``: the model interp sees.  Remote: ``nnsight_model`` (NDIF; its weights are on
        the meta device) or ``server_model`` (``remote="local"``: the local stand-in for the server's
        copy, while ``hf_model`` is a weightless meta copy, as a remote client has)."""
        from nnsight import TransformersModel

        self.a = adapter
        self.hf = hf_model
        self.remote = remote
        if nnsight_model is not None:
            self.nm = nnsight_model
        else:
            self.nm = TransformersModel(server_model if server_model is not None else hf_model, tokenizer=tokenizer)
        if remote:
            from ..remote import RemoteSession
            self.capabilities = frozenset({EDIT_SCORES, LAST_LOGITS, REMOTE})
            self.session = RemoteSession(self, remote)

    # ------------------------------------------------------------------ where sites are
    def envoy(self, path: str):
        env = self.nm
        for part in path.split("."):
            if part:
                env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    def locate(self, site: str, layer: int | None) -> tuple[str, str]:
        """``(module path, slot)`` of a primitive site: how :func:`interp.shipped.walk` reaches it."""
        lay = self.a.layout
        blk = f"{lay.layers}.{layer}"
        return {
            "embed": (lay.embed, "output"), "resid_pre": (blk, "input"), "resid_post": (blk, "post"),
            "attn_scores": (f"{blk}.{lay.attn}", "mask"), "attn_z": (f"{blk}.{lay.o_proj}", "heads"),
            "attn_out": (f"{blk}.{lay.attn}", "output0"), "attn_pattern": (f"{blk}.{lay.attn}", "output1"),
            "resid_mid": (f"{blk}.{lay.ln2}", "input"), "mlp_post": (f"{blk}.{lay.down}", "input"),
            "mlp_out": (f"{blk}.{lay.mlp}", "post"),
            **{site: (f"{blk}.{lay.qkv[i]}", f"qkv{i}" if lay.fused_qkv else "proj")
               for i, site in enumerate(QKV_SITES)},
        }[site]

    def steps(self, points) -> list[tuple]:
        """``[(site, layer, envoy, slot)]`` of ``points`` in the order the model computes them."""
        order = sorted(points, key=lambda p: (-1, 0) if p[1] is None else (p[1], SITE_ORDER[p[0]]))
        out = []
        for site, layer in order:
            path, slot = self.locate(site, layer)
            out.append((site, layer, self.envoy(path), slot))
        return out

    def _extra(self, last_only: bool) -> dict:
        from .hf import _keeps_logits
        return {"logits_to_keep": 1} if last_only and _keeps_logits(self.nm._module) else {}

    # ------------------------------------------------------------------ local forward
    def forward(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn],
                last_only: bool = False):
        if self.remote:
            from ..errors import EngineError
            raise EngineError("a remote model runs plans as data (Model.run), not Python hooks")
        steps = self.steps(hooks)
        a = self.a
        with self.nm.trace(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, use_cache=False, **self._extra(last_only)):
            walk(steps, lambda site, layer, x: hooks[(site, layer)](x), a.n_heads, a.d_head)
            logits = self.nm.lm_head.output.save()
        return logits

    # ------------------------------------------------------------------ remote
    def run_plan(self, model, plan, pts, **kwargs):
        """Run a plan remotely (capability ``remote``): see :meth:`interp.remote.RemoteSession.run_plan`."""
        return self.session.run_plan(model, plan, pts, **kwargs)

    def run_chain(self, model, parts):
        """Chained runs in one request (see :meth:`interp.remote.RemoteSession.run_chain`)."""
        return self.session.run_chain(model, parts)

    def generate(self, batch, max_new_tokens: int, pad_token_id: int):
        """Greedy generation on the server (see :meth:`interp.remote.RemoteSession.generate`)."""
        return self.session.generate(batch, max_new_tokens, pad_token_id)

    def compute(self, fn, *args):
        """``fn(weights, *args)`` on the server (see :meth:`interp.remote.RemoteSession.compute`)."""
        return self.session.compute(fn, *args)

