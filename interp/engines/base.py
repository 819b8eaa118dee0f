"""The engine contract: one forward pass with hook functions at (site, layer) points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Mapping

from jaxtyping import Float, Int
from torch import Tensor

ENGINES = ("hf", "transformer_lens", "nnsight")

#: (site, layer); layer is None for sites outside the blocks ("embed")
Point = tuple[str, "int | None"]
#: receives the site's tensor in canonical layout, returns the tensor the model continues with
HookFn = Callable[[Tensor], Tensor]


class Engine(ABC):
    name: str

    @abstractmethod
    def forward(self, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
                position_ids: Int[Tensor, "batch pos"],
                hooks: Mapping[Point, HookFn], last_only: bool = False) -> Float[Tensor, "batch pos vocab"]:
        """Run the model once, calling each hook at its point; return the logits.

        ``last_only``: the caller needs only the last column's logits (left-padded batch); an
        engine may then skip the unembedding of the other positions and return ``[batch, 1,
        vocab]`` (the LM head is ~20% of a small model's forward).

        Canonical layouts: residual-type sites ``[batch, pos, d_model]``; ``mlp_post``
        ``[batch, pos, d_mlp]``; ``attn_z`` ``[batch, pos, head, d_head]``; ``attn_pattern``
        ``[batch, head, query, key]``; ``attn_scores`` a tensor ``[batch, head or 1, query,
        key]`` *added to* the pre-softmax scores (an engine may pass the scores themselves or
        the additive mask: the only edit allowed, blocking, gives the same softmax either way).
        """
