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

The comparison is on the **first answer token** (with its leading space, as the model writes
it after ``answer:``): one forward per prompt instead of a generation loop, which is what a CPU
budget allows.  ``known`` marks examples whose closed-book token is the first token of the
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


@dataclass
class Labels:
    """Per-example behaviour labels and the tokens they came from."""

    source: list[str]
    known: list[bool]
    pred_sub: list[int]
    pred_org: list[int]
    pred_closed: list[int]
    sub_tokens: list[list[int]]
    org_tokens: list[list[int]]
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("source", "known", "pred_sub", "pred_org", "pred_closed",
                                              "sub_tokens", "org_tokens", "counts")}

    @classmethod
    def from_dict(cls, d: dict) -> "Labels":
        return cls(**d)


def source_labels(model, examples: Sequence[ConflictExample], pred_sub: Sequence[int],
                  pred_org: Sequence[int], pred_closed: Sequence[int]) -> Labels:
    """Label each conflict example ``context`` / ``memory`` / ``neither`` / ``ambiguous``.

    Args:
        pred_sub, pred_org, pred_closed: the greedy first token with the substituted context,
            with the original context and without context.
    """
    src, known, subs, orgs = [], [], [], []
    for e, ps, pc in zip(examples, pred_sub, pred_closed):
        st = sorted({answer_token(model, a) for a in e.sub_answers})
        ot = sorted({answer_token(model, a) for a in e.org_answers})
        subs.append(st)
        orgs.append(ot)
        known.append(int(pc) in ot)
        if int(pc) in st:
            src.append("ambiguous")
        elif int(ps) in st:
            src.append("context")
        elif int(ps) == int(pc):
            src.append("memory")
        else:
            src.append("neither")
    c = Counter(src)
    counts = {k: c.get(k, 0) for k in ("context", "memory", "neither", "ambiguous")}
    counts["known_closed_book"] = int(sum(known))
    counts["memory_and_known"] = int(sum(1 for s, k in zip(src, known) if s == "memory" and k))
    counts["org_context_answer"] = int(sum(1 for po, ot in zip(pred_org, orgs) if int(po) in ot))
    counts["n"] = len(src)
    return Labels(src, known, [int(x) for x in pred_sub], [int(x) for x in pred_org],
                  [int(x) for x in pred_closed], subs, orgs, counts)
