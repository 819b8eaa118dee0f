"""Labels from the model's own behaviour (Zhao et al. 2024; Xie et al. 2023).

For every example we have three greedy next tokens of the model (after ``answer:``):

* with the **substituted** context (the conflict), with the **original** context, and
* **closed-book** (no context): what the model answers from memory.

The *source* label of a conflict example is

* ``context`` — the greedy token is the first token of the substituted object,
* ``memory`` — it is the model's closed-book token (its memorised answer) and not the context's,
* ``neither`` — anything else (kept apart: not used by the source probe),
* ``ambiguous`` — the context's object and the memorised answer start with the same token, so
  the first token cannot tell them apart (kept apart too).

The comparison is on the **answer key**: the answer's first token as the model writes it after
``answer:`` (with its leading space) — and, when that token is bare whitespace (SmolLM2 writes
``" 23"`` as ``" "``, ``"2"``, ``"3"``), through the first non-space token.  The model's key is
its greedy token, plus one more greedy step for rows whose first token is whitespace
(:func:`probes.features.greedy_keys`): at most two forwards per prompt instead of a generation
loop, which is what a CPU budget allows.  Without the second step every numeric answer would
collide on ``" "``.  ``known`` marks examples whose closed-book token is the first token of the
original (true) object — the paper keeps only such memorised facts; on a 135M model few are,
so the counts are reported rather than assumed.

The *conflict* label needs no behaviour: the substituted-context prompt is 1, the original 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from .data import ConflictExample

SOURCE_CLASSES = ("context", "memory")


def answer_token(model, answer: str) -> int:
    """First token id of ``answer`` as written after ``answer:`` (with a leading space)."""
    tid, _ = model.encode_target(" " + answer.strip())
    return tid


def is_blank(model, token_id: int) -> bool:
    """Whether the token decodes to white space only (an empty answer)."""
    return model.tokenizer.decode([int(token_id)]).strip() == ""


def answer_key(model, answer: str) -> tuple[int, ...]:
    """Token ids of ``" " + answer`` up to and including the first non-whitespace token (≤ 2)."""
    ids = model.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        model.encode_target(" " + answer.strip())  # raises the typed PromptError
    if len(ids) > 1 and is_blank(model, ids[0]):
        return (int(ids[0]), int(ids[1]))
    return (int(ids[0]),)


def _key(x) -> tuple[int, ...]:
    return tuple(int(v) for v in x) if isinstance(x, (list, tuple)) else (int(x),)


@dataclass
class Labels:
    """Per-example behaviour labels and the tokens they came from."""

    source: list[str]
    known: list[bool]
    pred_sub: list[list[int]]
    pred_org: list[list[int]]
    pred_closed: list[list[int]]
    sub_tokens: list[list[list[int]]]
    org_tokens: list[list[list[int]]]
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON form (``labels.json``)."""
        return {k: getattr(self, k) for k in ("source", "known", "pred_sub", "pred_org", "pred_closed",
                                              "sub_tokens", "org_tokens", "counts")}

    @classmethod
    def from_dict(cls, d: dict) -> "Labels":
        """Read the form written by :meth:`to_dict`."""
        return cls(**d)


def source_labels(model, examples: Sequence[ConflictExample], pred_sub: Sequence[int],
                  pred_org: Sequence[int], pred_closed: Sequence[int]) -> Labels:
    """Label each conflict example ``context`` / ``memory`` / ``neither`` / ``ambiguous``.

    Args:
        pred_sub, pred_org, pred_closed: the model's greedy answer key (token ids, see the module
            note; a bare int is a one-token key) with the substituted context, with the original
            context and without context.
    """
    pred_sub = [_key(x) for x in pred_sub]
    pred_org = [_key(x) for x in pred_org]
    pred_closed = [_key(x) for x in pred_closed]
    src, known, subs, orgs = [], [], [], []
    for e, ps, pc in zip(examples, pred_sub, pred_closed):
        st = sorted({answer_key(model, a) for a in e.sub_answers})
        ot = sorted({answer_key(model, a) for a in e.org_answers})
        subs.append(st)
        orgs.append(ot)
        known.append(pc in ot)
        if pc in st:
            src.append("ambiguous")
        elif ps in st:
            src.append("context")
        elif ps == pc:
            src.append("memory")
        else:
            src.append("neither")
    c = Counter(src)
    counts = {k: c.get(k, 0) for k in ("context", "memory", "neither", "ambiguous")}
    counts["known_closed_book"] = int(sum(known))
    counts["memory_and_known"] = int(sum(1 for s, k in zip(src, known) if s == "memory" and k))
    counts["org_context_answer"] = int(sum(1 for po, ot in zip(pred_org, orgs) if po in ot))
    counts["n"] = len(src)
    return Labels(src, known, [list(x) for x in pred_sub], [list(x) for x in pred_org],
                  [list(x) for x in pred_closed], [[list(k) for k in x] for x in subs],
                  [[list(k) for k in x] for x in orgs], counts)
