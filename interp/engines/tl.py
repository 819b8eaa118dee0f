"""TransformerLens 4.x engine: ``TransformerBridge`` hook points.

The bridge is booted offline from the already-loaded Hugging Face model and tokenizer
(``boot_transformers(name, hf_model=..., tokenizer=...)``; without ``tokenizer=`` it would ask
the hub).  Booting wraps the model's modules *in place*, so :func:`interp.load` gives this engine
its own model instance.  Its BOS habit is switched off (see :mod:`interp.tokens`): interp feeds
token ids, never strings.

``resid_mid`` writes are compiled into ``attn_out`` edits by :mod:`interp.model` (the bridge's
``hook_resid_mid`` is the second norm's input, which does not reach the residual sum).
``attn_scores`` is ``attn.hook_attn_scores``: the scores themselves, mask already applied.
"""

from __future__ import annotations

from typing import Mapping

from ..capabilities import EDIT_SCORES, GRADIENTS
from .base import Engine, HookFn, Point

_NAMES = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "mlp_post": "blocks.{l}.mlp.hook_post",
    "attn_z": "blocks.{l}.attn.hook_z",
    "attn_q": "blocks.{l}.attn.hook_q",
    "attn_k": "blocks.{l}.attn.hook_k",
    "attn_v": "blocks.{l}.attn.hook_v",
    "attn_pattern": "blocks.{l}.attn.hook_pattern",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
}


class TLEngine(Engine):
    name = "transformer_lens"
    #: the bridge unembeds every position and was booted from the model's attention as loaded
    capabilities = frozenset({EDIT_SCORES, GRADIENTS})

    def __init__(self, hf_model, tokenizer, adapter):
        import logging
        import warnings

        from transformer_lens.model_bridge import TransformerBridge

        self.a = adapter
        name = getattr(hf_model.config, "_name_or_path", None) or adapter.model_type
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("transformer_lens").setLevel(logging.ERROR)
            self.bridge = TransformerBridge.boot_transformers(
                _boot_name(adapter.model_type, name), hf_model=hf_model, tokenizer=tokenizer,
                dtype=next(hf_model.parameters()).dtype)
        self.bridge.cfg.default_prepend_bos = False
        self.bridge.eval()

    @staticmethod
    def hook_name(point: Point) -> str:
        site, layer = point
        if site == "embed":
            return "hook_embed"
        return _NAMES[site].format(l=layer)

    def forward(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn],
                last_only: bool = False):  # the bridge always unembeds every position
        fwd = [(self.hook_name(p), (lambda f: (lambda t, hook: f(t)))(fn)) for p, fn in hooks.items()]
        return self.bridge.run_with_hooks(input_ids, fwd_hooks=fwd, attention_mask=attention_mask,
                                          position_ids=position_ids)


def _boot_name(model_type: str, name: str) -> str:
    # the bridge picks its architecture adapter from the config it is given; the name is only a
    # label, but must not send it to the hub for a local path
    return name if name and "/" in name and not name.startswith(("/", ".")) else model_type
