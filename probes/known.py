"""Conflicts that contradict what the model remembers: keep the facts it answers closed-book.

Zhao et al. (2024) probe conflicts only on facts the model has memorised: a substituted context
contradicts the model's memory only when the model holds the original answer.  A 135M model
knows ~20% of known_1000 and ~10% of NQ-Swap, so without this filter most "conflicts" contradict
nothing it remembers.  :func:`known_conflicts` applies interp's one known-fact rule
(:func:`interp.known.check_known`, by name from :data:`interp.known.KNOWN_RULES`) to each
example's closed-book prompt and keeps the examples it calls known.

Choices:

* **Rule: ``first_token`` by default** — the model's closed-book top-1 token is the first token of
  ``" " + answer``.  ROME's rule (the decoded top-1 equals the whole answer) never calls an
  answer of several tokens known ("Sundar Pichai", "Washington D.C."), which would keep only
  one-token objects; ``min_p`` needs a threshold with no natural value.  ``first_token`` asks
  exactly what the conflict needs: is the true object what the model would start to say?  It is
  also the rule of the project's knockout sweep and RAG comparison, and the token the source
  labels compare (:mod:`probes.labels`).
* **Answers that start with a bare-space token are excluded** (SmolLM2 writes ``" 1796"`` as
  ``" "``, ``"1"`` …): under ``first_token`` every number would be "known" as soon as the model
  starts a number.  They are counted per source under ``excluded``.
* **Closed-book prompt.**  For fact sets (cloze prompts) the check runs on the bare cloze prompt,
  as every other fact sweep of the project does (``"Vinson Massif is located in the continent
  of"`` → ``" Antarctica"``): ~12 tokens instead of ~100 for the few-shot closed-book prompt.
  QA sets have no cloze form; the caller passes their few-shot closed-book prompts
  (:func:`probes.prompts.closed_book_prompt`).  Whether the few-shot closed-book prompt gives the
  same answer is measured later anyway (``known_closed_book`` in the label counts).
* **Per-relation cap** (``per_relation``): a relation with few objects (5 continents) can be
  "known" for hundreds of subjects by guessing its most common object; the cap keeps the first
  ``per_relation`` known examples of each (source, relation), so no relation dominates the pool.

The scan is a resumable sweep (:class:`interp.sweep.Checkpoint`, one record per example, keyed by
its prompt and answer so a scan with a larger ``limit`` reuses a smaller one); an example whose
check fails is listed in ``errors`` and treated as not known.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from interp.datasets import Fact

from .data import ConflictExample

BLANK_FIRST = "answer starts with a bare-space token (numbers): the first-token rule cannot tell it"


@dataclass
class KnownScan:
    """The examples kept, and how many were scanned / known / kept per source (``origin``)."""

    examples: list[ConflictExample]
    rule: str
    counts: dict = field(default_factory=dict)
    per_relation: int | None = None
    errors: list = field(default_factory=list)

    def totals(self) -> dict:
        """Facts scanned, known and kept, summed over every source."""
        keys = ("scanned", "known", "kept")
        return {k: sum(c[k] for c in self.counts.values()) for k in keys}

    def to_dict(self) -> dict:
        """The scan's record for a result file: rule, cap, totals, per-source counts, kept ids, errors."""
        return {"rule": self.rule, "per_relation": self.per_relation, "totals": self.totals(),
                "counts": self.counts, "kept_ids": [e.id for e in self.examples], "errors": self.errors}


def _item_key(prompt: str, answer: str) -> str:
    return hashlib.sha1(f"{prompt}\x00{answer}".encode()).hexdigest()[:20]


def check_rule(rule: str, min_p: float | None = None, per_relation: int | None = None) -> None:
    """Raise :class:`~interp.errors.SettingError` for an unknown rule, ``min_p`` without its threshold,
    or a ``per_relation`` cap below 1."""
    from interp.errors import SettingError
    from interp.known import KNOWN_RULES

    if rule not in KNOWN_RULES:
        raise SettingError(f"unknown known-fact rule {rule!r}; choose one of: {', '.join(KNOWN_RULES)}")
    if rule == "min_p" and (min_p is None or not 0 <= min_p <= 1):
        raise SettingError("the 'min_p' known rule needs a threshold in [0, 1]: pass known_min_p= (--known-min-p)")
    if per_relation is not None and per_relation < 1:
        raise SettingError(f"per_relation (--per-relation) must be at least 1, not {per_relation}")


def known_conflicts(model, examples: Sequence[ConflictExample], *, rule: str = "first_token",
                    min_p: float | None = None, prompts: Sequence[str] | None = None,
                    out_dir: str | Path | None = None, per_relation: int | None = None, batch_size: int = 64,
                    progress: bool = True) -> KnownScan:
    """Keep the examples whose original answer the model gives closed-book (see the module note).

    Args:
        rule: a rule of :data:`interp.known.KNOWN_RULES` (``min_p`` then needs ``min_p``).
        prompts: the closed-book prompt of each example (default: its question, the cloze prompt
            of a fact set).
        out_dir: where the resumable scan log goes (None: not kept).
        per_relation: keep at most this many known examples of each (origin, relation), in order.
    Returns:
        :class:`KnownScan` with the kept examples in their original order.
    """
    from interp.known import check_known
    from interp.sweep import Checkpoint, SweepErrors, map_batches

    from .labels import answer_key, is_blank

    examples = list(examples)
    check_rule(rule, min_p, per_relation)
    prompts = [e.question for e in examples] if prompts is None else list(prompts)
    if len(prompts) != len(examples):
        raise ValueError(f"{len(prompts)} prompts for {len(examples)} examples")
    counts: dict[str, dict] = {}

    def count(e: ConflictExample) -> dict:
        return counts.setdefault(e.origin or e.source, {"scanned": 0, "known": 0, "kept": 0, "excluded": {}})

    todo: list[tuple[int, str]] = []
    for i, e in enumerate(examples):
        c = count(e)
        c["scanned"] += 1
        if rule == "first_token" and is_blank(model, answer_key(model, e.org_answers[0])[0]):
            c["excluded"][BLANK_FIRST] = c["excluded"].get(BLANK_FIRST, 0) + 1
            continue
        todo.append((i, _item_key(prompts[i], e.org_answers[0])))
    ck = Checkpoint(out_dir, {"rule": rule, "min_p": min_p, "model": model.name}) if out_dir is not None else None
    done = {} if ck is None else dict(ck.results())
    missing = [(i, k) for i, k in todo if k not in done]
    errors = SweepErrors("known scan")
    bar = None
    if progress and missing:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), initial=len(todo) - len(missing), desc="known scan", unit="example")

    def check(block):
        facts = [Fact(prompts[i], examples[i].question, examples[i].org_answers[0], examples[i].row)
                 for i, _ in block]
        res = check_known(model, facts, rule=rule, min_p=min_p, batch_size=len(facts))
        out = []
        for (i, k), r in zip(block, res):
            rec = {"id": examples[i].id, "known": bool(r.known), "top": int(r.top_id), "p_answer": round(r.p_answer, 6)}
            if ck is not None:
                ck.add(k, rec)
            done[k] = rec
            out.append(rec)
        if bar is not None:
            bar.update(len(block))
        return out

    for j in range(0, len(missing), batch_size * 4):  # map_batches reruns a failing batch item by item
        map_batches(check, missing[j:j + batch_size * 4], batch_size, errors,
                    lambda it: (examples[it[0]].row, examples[it[0]].id))
    if bar is not None:
        bar.close()
    per_rel: Counter = Counter()
    kept = []
    for i, k in todo:
        rec = done.get(k)
        if rec is None or not rec["known"]:
            continue
        e = examples[i]
        c = count(e)
        c["known"] += 1
        rel = (e.origin, e.relation)
        if per_relation is not None and per_rel[rel] >= per_relation:
            continue
        per_rel[rel] += 1
        c["kept"] += 1
        kept.append(e)
    return KnownScan(kept, rule, counts, per_relation, errors.by_row())
