"""Last-token activations of every layer, streamed to disk with the core's sharded cache.

Components follow Zhao et al. (2024): the output of each decoder layer (``resid`` →
``resid_post``), of its MLP (``mlp`` → ``mlp_out``) and of its self-attention (``attn`` →
``attn_out``) — interp's one component vocabulary, :data:`interp.arch.COMPONENTS` — read at the
last prompt token (``positions=[-1]``).  Extraction goes through
:func:`interp.cache.extract_activations` — batched ``model.run`` reads, safetensors shards of
``shard_rows`` prompts, resumable after a kill, fixed memory.

Two choices made here:

* **Length sorting.**  Prompts are run in order of token length so a batch carries little
  padding (a forward costs in proportion to its padded width).  The permutation is stored in
  ``order.json`` next to the shards and undone on read: ``Features.get`` returns rows in the
  caller's order.
* **Greedy answer for free.**  The last layer's ``resid_post`` is always extracted; passing it
  through the adapter's final norm and unembedding gives exactly the model's next-token logits,
  so the labels of :mod:`probes.labels` need no second forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.arch import COMPONENTS, check_components
from interp.remote import ships_with_requests

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)


@dataclass
class Features:
    """Activations of prompts at the last token, in the caller's row order."""

    acts: object  # interp.cache.ShardedActivations
    order: list[int]  # order[k] = caller row of stored row k
    components: list[str]
    layers: list[int]
    n_layers: int

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.order)

    def _unsort(self, t: Tensor) -> Tensor:
        out = torch.empty_like(t)
        out[torch.tensor(self.order)] = t
        return out

    def get(self, component: str, layer: int) -> Float[Tensor, "n d_model"]:
        """Last-token activations of ``component`` at ``layer``, in the caller's row order."""
        site = COMPONENTS[component]
        return self._unsort(self.acts.load(site, layer)[:, -1].float())

    def stack(self, component: str, layers: Sequence[int] | None = None) -> Float[Tensor, "layer n d_model"]:
        """Activations of ``component`` for every layer: ``[layer, n, d_model]``."""
        return torch.stack([self.get(component, l) for l in (layers or self.layers)])

    def final_resid(self) -> Float[Tensor, "n d_model"]:
        """The last layer's ``resid_post`` at the last token (its unembedding is the model's next-token logits)."""
        return self._unsort(self.acts.load("resid_post", self.n_layers - 1)[:, -1].float())


def extract_features(model, prompts: Sequence[str], out_dir: str | Path, *,
                     components: Iterable[str] = ("resid", "mlp", "attn"), layers: Iterable[int] | None = None,
                     batch_size: int = 16, shard_rows: int = 64, progress: bool = True) -> Features:
    """Stream last-token activations of ``prompts`` for every layer × component to ``out_dir``.

    Resumable: rerun with the same arguments to finish a killed extraction (see
    :mod:`interp.cache`).  Follows Zhao et al. (2024): features at the last prompt token.
    """
    from interp.cache import extract_activations

    comps = check_components(components)
    L = model.n_layers
    lay = list(range(L)) if layers is None else sorted({model.adapter.check_layer(l) for l in layers})
    reads = [(COMPONENTS[c], l) for c in comps for l in lay]
    if ("resid_post", L - 1) not in reads:
        reads.append(("resid_post", L - 1))
    lengths = [len(model.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acts = extract_activations(model, [prompts[i] for i in order], reads, out, positions=[-1],
                               batch_size=batch_size, shard_rows=shard_rows, progress=progress)
    from interp.sweep import write_atomic
    write_atomic(out / "order.json", json.dumps(order))
    return Features(acts, order, comps, lay, L)


def greedy_from_resid(model, final_resid: Float[Tensor, "n d_model"], k: int = 1
                      ) -> Int[Tensor, "n k"]:
    """Top-``k`` next-token ids from the last layer's ``resid_post`` (final norm + unembed), computed
    where the model runs (for a remote model the residuals travel up, the ids back)."""
    return model.compute(unembed_topk, final_resid, k)


def unembed_topk(w, h: Float[Tensor, "n d_model"], k: int) -> Int[Tensor, "n k"]:
    """Top-``k`` token ids of ``w.unembed(h)``, 256 rows at a time."""
    out = []
    for i in range(0, h.shape[0], 256):
        out.append(w.unembed(h[i:i + 256].to(w.W_U.device, w.W_U.dtype)).float().topk(k, -1).indices)
    return torch.cat(out)


@torch.no_grad()
def greedy_keys(model, prompts: Sequence[str], first: Sequence[int], *, batch_size: int = 16
                ) -> list[tuple[int, ...]]:
    """Greedy answer keys: ``(first,)``, or ``(first, second)`` when ``first`` is bare whitespace.

    The second greedy token is computed only for those rows, by one more forward of the prompt
    with ``first`` appended (token ids, so no re-tokenisation can merge it into the prompt).
    See :mod:`probes.labels` for why (digits are separate tokens after a bare ``" "``).
    """
    from interp.tokens import Batch

    keys: list[tuple[int, ...]] = [(int(t),) for t in first]
    blank = [i for i, t in enumerate(first) if model.tokenizer.decode([int(t)]).strip() == ""]
    for j in range(0, len(blank), batch_size):
        rows = blank[j:j + batch_size]
        b = model.tokenize([prompts[i] for i in rows])
        tok = torch.tensor([int(first[i]) for i in rows])[:, None]
        if b.padding_side != "left":
            raise SiteError("greedy_keys needs a left-padded batch")
        ext = Batch(b.prompts, torch.cat([b.input_ids, tok], 1),
                    torch.cat([b.attention_mask, torch.ones_like(tok)], 1), [n + 1 for n in b.lengths],
                    [o + [(len(p), len(p))] for o, p in zip(b.offsets, b.prompts)], "left")
        second = model.run(ext, max_rows=batch_size, logits=lambda lg: lg.argmax(-1)).logits
        for i, s2 in zip(rows, second.tolist()):
            keys[i] = (int(first[i]), int(s2))
    return keys
