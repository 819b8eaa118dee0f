"""Which facts the model knows, and whether a tracked target is one it predicts.

Methods that sweep a fact set keep the facts the model already gets right: a causal trace or a
knockout of an answer the model does not give measures noise.  The papers use two rules, both
written here once and chosen by name (:data:`KNOWN_RULES`):

* ``"rome"`` — ROME's ``causal_trace.py``: the clean greedy token, decoded and stripped, equals
  the attribute (so an attribute of several tokens never counts as known);
* ``"first_token"`` — the clean top-1 token is the first token of ``" " + attribute`` (Geva et
  al. track the model's own prediction; interp's knockout sweep, the RAG comparison and the
  concept-vector checks use this rule);
* ``"min_p"`` — p(first token of ``" " + attribute``) ≥ ``min_p`` (a softer rule for small models).

The tracked target of a known fact is the clean top-1 token (``"rome"``, ``"first_token"``) or
the attribute's first token (``"min_p"``).

A single analysis with a given target warns (:class:`~interp.errors.UnknownTargetWarning`, never
an error) when that target is not the model's top-1 or its clean probability is below
``min_p_clean`` (default :data:`MIN_P_CLEAN`): :func:`check_target` is called by causal tracing
and attention knockout, and sweeps count such rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

from .errors import InterventionError, UnknownTargetWarning

KNOWN_RULES = {
    "rome": "clean greedy token (decoded, stripped) == attribute",
    "first_token": "clean top-1 == first token of ' ' + attribute",
    "min_p": "p(first token of ' ' + attribute) >= min_p",
}
#: default threshold of the unknown-target warning (p_clean below it: the model does not answer it)
MIN_P_CLEAN = 0.05


def answer_id(model, attribute: str) -> int:
    """First token id of ``" " + attribute`` (the answer token a factual prompt should produce)."""
    return model.encode_target(" " + attribute.strip())[0]


@dataclass(frozen=True)
class KnownCheck:
    """One fact under a known rule: is it known, which token to track, and the clean numbers."""

    known: bool
    target_id: int
    top_id: int
    answer_id: int
    p_target: float
    p_answer: float


def check_known(model, facts: Sequence, *, rule: str = "first_token", min_p: float | None = None,
                batch_size: int = 64) -> list[KnownCheck]:
    """Apply a known rule of :data:`KNOWN_RULES` to ``facts`` (clean forwards, ``batch_size`` at a time).

    Args:
        facts: objects with ``.prompt`` and ``.attribute`` (:class:`interp.datasets.Fact`).
        rule: ``"rome"``, ``"first_token"`` or ``"min_p"`` (then ``min_p`` is required).
    Returns:
        one :class:`KnownCheck` per fact, in order.
    """
    if rule not in KNOWN_RULES:
        raise InterventionError(f"unknown known-fact rule {rule!r}; choose from {', '.join(KNOWN_RULES)}")
    if rule == "min_p" and min_p is None:
        raise InterventionError("rule 'min_p' needs min_p=, the probability a known answer must reach")
    facts = list(facts)
    out: list[KnownCheck] = []
    dec = model.tokenizer.decode
    for i in range(0, len(facts), batch_size):
        chunk = facts[i:i + batch_size]
        probs = model.run([f.prompt for f in chunk], logits=lambda lg: lg.float().softmax(-1)).logits
        for f, p in zip(chunk, probs):
            top = int(p.argmax())
            ans = answer_id(model, f.attribute)
            if rule == "rome":
                known, tid = dec([top]).strip() == f.attribute.strip(), top
            elif rule == "first_token":
                known, tid = top == ans, top
            else:
                known, tid = float(p[ans]) >= min_p, ans
            out.append(KnownCheck(known, tid, top, ans, float(p[tid]), float(p[ans])))
    return out


def unknown_target(p_clean: float, is_top1: bool, min_p_clean: float | None = MIN_P_CLEAN) -> str | None:
    """Why a target counts as unknown (not the top-1, or p_clean below the threshold), else None."""
    why = []
    if not is_top1:
        why.append("it is not the model's top-1 prediction")
    if min_p_clean is not None and p_clean < min_p_clean:
        why.append(f"p_clean = {p_clean:.4f} < {min_p_clean}")
    return " and ".join(why) or None


def check_target(target: str, p_clean: float, is_top1: bool, *, min_p_clean: float | None = MIN_P_CLEAN,
                 method: str = "", stacklevel: int = 3) -> str | None:
    """Warn (:class:`~interp.errors.UnknownTargetWarning`) when the tracked target is unknown.

    Returns the reason (also stored in results), or None.  ``min_p_clean=None`` checks only the
    top-1 condition.
    """
    why = unknown_target(p_clean, is_top1, min_p_clean)
    if why:
        warnings.warn(f"{method + ': ' if method else ''}the target {target!r} is not what the model "
                      f"predicts ({why}): the effects are measured on a token it does not answer (pick a fact "
                      f"the model knows, or set min_p_clean= / --min-p-clean to change the threshold)",
                      UnknownTargetWarning, stacklevel=stacklevel)
    return why

