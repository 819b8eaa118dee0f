"""Prompts in the format of Zhao et al. (2024): few-shot ``context / question / answer`` blocks.

Each prompt is ``k`` demonstrations (default 4, original context and its answer, as in the
paper) followed by the query::

    context: <context>
    question: <question>
    answer: <answer>

    ...
    context: <context>
    question: <question>
    answer:

The probe reads the activation of the last prompt token (the ``:`` after ``answer``).  The
closed-book prompt (what the model answers *from memory*) is the same with every ``context:``
line removed.

**Truncation (CPU budget).**  NQ contexts are Wikipedia passages (median ~600 characters, up
to 5,000).  A forward costs roughly in proportion to the tokens, and the default model on 2 CPU
cores runs ~2–3k tokens/s, so every context — demonstrations and query — is cut to a window
of at most ``max_chars`` characters (default 160; 80 for demonstrations) *around the sentence that states the answer*:
the answer sentence, then whole neighbouring sentences while they fit, and a word-level cut with
``…`` when the answer sentence alone is too long.  The original and the substituted context
are cut around their own answers with the same budget, so they still differ only in the object.
HTML markers of NQ (``<P>``, ``<Table>``, ``<Td>`` …) are removed first.

Demonstrations are taken from the dataset itself (the first ``k`` distinct groups after a
seeded shuffle) and their groups are removed from the probed examples, so no demonstrated fact
is also probed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .data import ConflictExample

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*>")
_BOUND = re.compile(r"(?<=[.!?])\s+")


def clean(text: str) -> str:
    """Remove NQ's HTML markers and collapse whitespace."""
    return re.sub(r"\s+", " ", _TAG.sub(" ", text)).strip()


def truncate_context(context: str, answer: str | None, max_chars: int = 240) -> str:
    """Cut ``context`` to ≤ ``max_chars`` characters around the sentence stating ``answer``.

    Whole sentences are kept where they fit (the answer sentence first, then alternately the
    following and preceding ones); an answer sentence longer than the budget is cut word-wise
    around the answer and marked with ``…``.  When the answer does not occur, the start of the
    context is kept.
    """
    text = clean(context)
    if len(text) <= max_chars:
        return text
    i = -1
    if answer:  # prefer a whole-word match ("23" not inside "1923")
        m = re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", text)
        i = m.start() if m else text.find(answer)
    if i < 0 and answer:
        i = text.lower().find(answer.lower())
    if i < 0:
        cut = text[:max_chars].rsplit(" ", 1)[0]
        return cut + " …"
    starts = [0] + [m.end() for m in _BOUND.finditer(text)]
    ends = [m.start() for m in _BOUND.finditer(text)] + [len(text)]
    sents = list(zip(starts, ends))
    k = max(j for j, (s, _) in enumerate(sents) if s <= i)
    # the answer may straddle a false sentence boundary ("Timothy B. Schmit"): extend to cover it
    k_end = k
    while sents[k_end][1] < i + len(answer) and k_end + 1 < len(sents):
        k_end += 1
    lo, hi = k, k_end
    s0, e0 = sents[lo][0], sents[hi][1]
    if e0 - s0 > max_chars:
        a0, a1 = i, i + len(answer)
        half = max(0, (max_chars - (a1 - a0)) // 2)
        w0, w1 = max(s0, a0 - half), min(e0, a1 + half)
        if w0 > s0:
            w0 = text.find(" ", w0) + 1 if text.find(" ", w0) != -1 and text.find(" ", w0) < a0 else w0
        if w1 < e0:
            sp = text.rfind(" ", a1, w1)
            w1 = sp if sp > a1 else w1
        return ("… " if w0 > s0 else "") + text[w0:w1].strip() + (" …" if w1 < e0 else "")
    grow_next = True
    while True:
        moved = False
        for side in ((1, -1) if grow_next else (-1, 1)):
            if side == 1 and hi + 1 < len(sents) and sents[hi + 1][1] - s0 <= max_chars:
                hi += 1
                moved = True
                break
            if side == -1 and lo - 1 >= 0 and e0 - sents[lo - 1][0] <= max_chars:
                lo -= 1
                moved = True
                break
        s0, e0 = sents[lo][0], sents[hi][1]
        grow_next = not grow_next
        if not moved:
            break
    return text[s0:e0].strip()


def _question(q: str, cloze: bool = False) -> str:
    """NQ questions come without a question mark (the paper adds one); cloze prompts stay as is."""
    q = q.strip()
    return q if cloze or q.endswith("?") else q + "?"


@dataclass
class PromptSet:
    """Prompts for probed examples: with the original / substituted context, and closed-book."""

    examples: list[ConflictExample]
    org: list[str]
    sub: list[str]
    closed: list[str]
    demos: list[ConflictExample]
    org_contexts: list[str]
    sub_contexts: list[str]
    max_chars: int
    n_demos: int


def block(context: str | None, question: str, answer: str | None = None, *, cloze: bool = False) -> str:
    """One ``context / question / answer`` block (no context line when ``context`` is None)."""
    head = f"context: {context}\n" if context is not None else ""
    tail = f" {answer}" if answer is not None else ""
    return f"{head}question: {_question(question, cloze)}\nanswer:{tail}"


def choose_demos(examples: list[ConflictExample], n_demos: int = 4, *, seed: int = 0) -> list[ConflictExample]:
    """The first ``n_demos`` distinct groups after a seeded shuffle whose context states the answer."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    demos, seen = [], set()
    for j in order:
        if len(demos) >= n_demos:
            break
        e = examples[j]
        if e.group in seen:
            continue
        seen.add(e.group)
        if e.org_answers[0] and e.org_answers[0] in clean(e.org_context):
            demos.append(e)
    return demos


def closed_book_prompt(demos: list[ConflictExample], e: ConflictExample) -> str:
    """The demonstrations without their contexts, then ``e``'s question: what the model answers from memory."""
    return "".join(block(None, d.question, d.org_answers[0], cloze=d.source == "facts") + "\n\n"
                   for d in demos) + block(None, e.question, cloze=e.source == "facts")


def build_prompts(examples: list[ConflictExample], *, n_demos: int = 4, max_chars: int = 160,
                  demo_chars: int = 80, seed: int = 0, demos: list[ConflictExample] | None = None) -> PromptSet:
    """Few-shot prompts for every example whose group is not used as a demonstration.

    Args:
        n_demos: demonstrations per prompt (paper: 4), from the set itself (:func:`choose_demos`)
            unless ``demos``.
        max_chars: context budget of the probed example in characters (see the module note).
        demo_chars: context budget of each demonstration (shorter: they only show the format).
    """
    if demos is None:
        demos = choose_demos(examples, n_demos, seed=seed)
    demo_groups = {d.group for d in demos}
    prefix = "".join(block(truncate_context(d.org_context, d.org_answers[0], demo_chars), d.question,
                           d.org_answers[0], cloze=d.source == "facts") + "\n\n" for d in demos)
    kept = [e for e in examples if e.group not in demo_groups]
    oc = [truncate_context(e.org_context, e.org_answers[0], max_chars) for e in kept]
    sc = [truncate_context(e.sub_context, e.sub_answers[0], max_chars) for e in kept]
    org = [prefix + block(c, e.question, cloze=e.source == "facts") for c, e in zip(oc, kept)]
    sub = [prefix + block(c, e.question, cloze=e.source == "facts") for c, e in zip(sc, kept)]
    closed = [closed_book_prompt(demos, e) for e in kept]
    return PromptSet(kept, org, sub, closed, list(demos), oc, sc, max_chars, len(demos))
