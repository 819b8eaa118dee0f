"""The engine contract: one forward pass with hook functions at (site, layer) points.

An engine also *advertises capabilities* (:attr:`Engine.capabilities`, names in
:mod:`interp.capabilities`); methods ask for a capability — ``model.supports(SKIP_WORK)`` —
never for an engine's name.  An engine with :data:`~interp.capabilities.SKIP_WORK` implements
the primitives below (a capturing forward, one decoder layer on a slice of positions with the
prefix's keys/values, the embedding and the unembedding), built from the model's own modules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

from jaxtyping import Float, Int
from torch import Tensor

from ..capabilities import SKIP_WORK

ENGINES = ("hf", "transformer_lens", "nnsight")

#: (site, layer); layer is None for sites outside the blocks ("embed")
Point = tuple[str, "int | None"]
#: receives the site's tensor in canonical layout, returns the tensor the model continues with
HookFn = Callable[[Tensor], Tensor]


class Engine(ABC):
    name: str
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    def forward(self, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
                position_ids: Int[Tensor, "batch pos"],
                hooks: Mapping[Point, HookFn], last_only: bool = False) -> Float[Tensor, "batch pos vocab"]:
        """Run the model once, calling each hook at its point; return the logits.

        ``last_only``: the caller needs only the last column's logits (left-padded batch); an
        engine with :data:`LAST_LOGITS` may then skip the unembedding of the other positions and
        return ``[batch, 1, vocab]``.

        Canonical layouts: residual-type sites ``[batch, pos, d_model]``; ``mlp_post``
        ``[batch, pos, d_mlp]``; ``attn_z`` and ``attn_q`` ``[batch, pos, head, d_head]``;
        ``attn_k`` / ``attn_v`` ``[batch, pos, kv_head, d_head]``; ``attn_pattern``
        ``[batch, head, query, key]``; ``attn_scores`` a tensor ``[batch, head or 1, query,
        key]`` *added to* the pre-softmax scores (an engine may pass the scores themselves or
        the additive mask: the only edit allowed, blocking, gives the same softmax either way).
        """

    # ------------------------------------------------------------------ SKIP_WORK primitives
    def _no_skip(self):
        from ..errors import EngineError
        raise EngineError(f"engine {self.name!r} cannot skip work (capability {SKIP_WORK!r}); "
                          f"run the plan in full (Model.run(..., skip=False)) or use engine 'hf'")

    @contextmanager
    def hooked(self, hooks: Mapping[Point, HookFn]):
        """Keep ``hooks`` active while the primitives below run."""
        self._no_skip()
        yield

    def forward_capture(self, input_ids, attention_mask, position_ids, hooks: Mapping[Point, HookFn]
                        ) -> tuple[Float[Tensor, "batch vocab"], list, list[dict]]:
        """A hooked forward that also returns, per layer, the keys/values the attention used
        (``(K, V)``, each ``[batch, kv_head, pos, d_head]``) and the keyword arguments the model
        gave the decoder layer; logits at the last column only."""
        self._no_skip()

    def embed(self, input_ids: Int[Tensor, "rows pos"], position_ids: Int[Tensor, "rows pos"]
              ) -> Float[Tensor, "rows pos d_model"]:
        """The residual stream entering layer 0 for these tokens (embedding hooks fire)."""
        self._no_skip()

    def block(self, layer: int, hidden: Float[Tensor, "rows pos d_model"], args: dict, cache
              ) -> Float[Tensor, "rows pos d_model"]:
        """Decoder layer ``layer`` on ``hidden`` with the model's own keyword ``args`` (sliced to
        these positions) and ``cache`` supplying the earlier positions' keys/values."""
        self._no_skip()

    def unembed(self, h: Float[Tensor, "rows d_model"], tokens: Sequence[int] | None = None
                ) -> Float[Tensor, "rows vocab"]:
        """Final norm and LM head (only the columns of ``tokens`` when given)."""
        self._no_skip()
