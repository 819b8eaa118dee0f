"""Tokens, character spans and padded batches.

**BOS policy (one for every engine).**  interp tokenises every prompt itself, with the
tokenizer's own ``add_special_tokens=True`` behaviour, and hands the *token ids* to whichever
engine runs them.  So a model whose tokenizer adds a BOS (GPT-2 style tokenizers do not, Llama-2
does) gets one, and SmolLM2 — whose tokenizer adds none — gets none, under the plain Hugging
Face forward, the TransformerLens bridge and nnsight alike.  The bridge's own habit of
prepending a BOS is switched off when it is booted (``default_prepend_bos=False``), so
``bridge.to_tokens(p)`` agrees with us too.  Pass ``prepend_bos=True`` to :func:`tokenize` to
force a BOS.

**Padding.**  Batches are left-padded by default, so the last prompt token sits at position
``-1`` of every row (what generation-style reads want).  Every user-facing position is
*relative to the prompt* (``0`` is its first token, ``-1`` its last); :class:`Batch` converts to
the absolute column of the padded tensor with :meth:`Batch.abs_pos`.  Position ids are computed
from the attention mask, so rotary / learned positions of a padded row equal those of the prompt
alone: batched results equal one-prompt-at-a-time results.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import LayerIndexError, PromptError, SpanNotFoundError


@dataclass
class Batch:
    """A padded batch of tokenised prompts."""

    prompts: list[str]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    lengths: list[int]
    offsets: list[list[tuple[int, int]]] = field(repr=False)
    padding_side: str = "left"

    @property
    def size(self) -> int:
        """Number of rows."""
        return len(self.prompts)

    @property
    def width(self) -> int:
        """Padded length of every row."""
        return self.input_ids.shape[1]

    @functools.cached_property
    def pad(self) -> list[int]:
        """Number of padding columns before each prompt's first token (computed once: a batch's
        tensors are never changed in place)."""
        if self.padding_side == "left":
            return [self.width - n for n in self.lengths]
        return [0] * self.size

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Position ids counting from each row's first real token (left padding stays at 0)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def abs_pos(self, row: int, pos: int) -> int:
        """Column in the padded tensor of prompt-relative position ``pos`` of ``row``."""
        n = self.lengths[row]
        if not -n <= pos < n:
            raise LayerIndexError(
                f"position {pos} out of range for prompt {row} of {n} tokens "
                f"(valid: 0..{n - 1}, or negative from the end)")
        return self.pad[row] + (pos % n)

    def last_positions(self) -> Int[Tensor, "batch"]:
        """The column of each row's last token."""
        return torch.tensor([self.abs_pos(i, -1) for i in range(self.size)])

    def token_ids(self, row: int) -> list[int]:
        """Row ``row``'s token ids without padding."""
        p = self.pad[row]
        return self.input_ids[row, p:p + self.lengths[row]].tolist()

    def select(self, rows: Sequence[int]) -> "Batch":
        """A batch of the rows ``rows`` (repeats allowed, e.g. one prompt per counterfactual world)."""
        rows = list(rows)
        return Batch([self.prompts[i] for i in rows], self.input_ids[rows], self.attention_mask[rows],
                     [self.lengths[i] for i in rows], [self.offsets[i] for i in rows], self.padding_side)

    def head(self, n: int) -> "Batch":
        """The first ``n`` tokens of every prompt (left-padded anew).  With causal attention every
        state of those positions is the same as in the whole prompt, so a method that reads
        nothing after position ``n - 1`` runs this instead and skips the rest."""
        if not 1 <= n <= min(self.lengths):
            raise LayerIndexError(f"cannot keep the first {n} tokens of prompts of {min(self.lengths)} tokens")
        ids = [self.token_ids(r)[:n] for r in range(self.size)]
        left = self.padding_side == "left"
        return Batch(self.prompts, torch.tensor(ids, dtype=self.input_ids.dtype),
                     torch.ones(self.size, n, dtype=self.attention_mask.dtype), [n] * self.size,
                     [o[:n] for o in self.offsets], "left" if left else "right")

    def to(self, device) -> "Batch":
        """The same batch with its tensors on ``device``."""
        return Batch(self.prompts, self.input_ids.to(device), self.attention_mask.to(device),
                     self.lengths, self.offsets, self.padding_side)


def tokenize(tokenizer, prompts: str | Sequence[str], *, padding_side: str = "left",
             prepend_bos: bool = False, max_length: int | None = None) -> Batch:
    """Tokenise prompts with character offsets into a padded :class:`Batch`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise PromptError("no prompts given: pass a string or a non-empty list of strings")
    if padding_side not in ("left", "right"):
        raise PromptError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    ids: list[list[int]] = []
    offs: list[list[tuple[int, int]]] = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(f"prompt {i} is a {type(p).__name__}, not a string")
        if not p.strip():
            raise PromptError(f"prompt {i} is empty: give at least one non-space character")
        enc = tokenizer(p, add_special_tokens=True, return_offsets_mapping=True)
        tid, off = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        bos = tokenizer.bos_token_id
        if prepend_bos and bos is not None and (not tid or tid[0] != bos):
            tid, off = [bos] + tid, [(0, 0)] + off
        if max_length is not None and len(tid) > max_length:
            raise PromptError(
                f"prompt {i} has {len(tid)} tokens but the model's context is {max_length}: "
                f"shorten it or split it")
        ids.append(tid)
        offs.append(off)
    width = max(len(t) for t in ids)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, t in enumerate(ids):
        sl = slice(width - len(t), width) if padding_side == "left" else slice(0, len(t))
        input_ids[r, sl] = torch.tensor(t)
        mask[r, sl] = 1
    return Batch(prompts, input_ids, mask, [len(t) for t in ids], offs, padding_side)


def find_span(prompt: str, offsets: Sequence[tuple[int, int]], substring: str,
              occurrence: int = 0) -> tuple[int, int]:
    """Token range ``[start, end)`` (prompt-relative) covering ``substring`` in ``prompt``.

    ``occurrence`` picks which match when the substring occurs more than once (0 = first,
    -1 = last).  Tokens that overlap the substring's characters at all are included.
    """
    if not substring or not substring.strip():
        raise SpanNotFoundError("the substring to find is empty: give the subject or context text")
    starts, i = [], prompt.find(substring)
    while i != -1:
        starts.append(i)
        i = prompt.find(substring, i + 1)
    if not starts:
        raise SpanNotFoundError(
            f"{substring!r} does not occur in the prompt {prompt!r}: check spelling and spacing "
            f"(the match is case-sensitive)")
    try:
        c0 = starts[occurrence]
    except IndexError:
        raise SpanNotFoundError(
            f"{substring!r} occurs {len(starts)} time(s) in the prompt; occurrence={occurrence} "
            f"does not exist") from None
    c1 = c0 + len(substring)
    toks = [t for t, (a, b) in enumerate(offsets) if b > a and a < c1 and b > c0]
    if not toks:
        raise SpanNotFoundError(f"{substring!r} maps to no token of the prompt")
    return toks[0], toks[-1] + 1
