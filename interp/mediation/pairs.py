"""Clean / corrupted prompt pairs for patching over a dataset: subject swaps of equal token length.

Activation patching compares two prompts position by position, so they must have the same
number of tokens.  For a known_1000-style fact set, a *subject swap* keeps fact A's prompt and
replaces its subject with the subject of another fact B of the **same relation** (so the
question is the same and only the entity changes), keeping the pair only when

* the model knows A (:func:`interp.known.check_known`, rule ``"first_token"``: its clean top-1
  token is the first token of ``" " + attribute``),
* the swapped prompt has exactly as many tokens as A's prompt, and
* the model knows B in A's wording (the same rule on the swapped prompt with B's attribute), and
  B's answer differs from A's (it is the ``wrong`` answer of the logit
  difference) — so both runs are facts the model recalls, and the pair contrasts two answers.

Pairs are taken in dataset order, one per fact A, with the first B that qualifies — the same
facts give the same pairs on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from ..known import answer_id, check_known


@dataclass(frozen=True)
class PromptPair:
    """One clean / corrupted pair: ``answer`` is the clean top-1, ``wrong`` the corrupted top-1."""

    id: str
    clean: str
    corrupt: str
    answer: str
    wrong: str
    subject: str
    corrupt_subject: str
    relation: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def subject_swap_pairs(model, dataset: str | Path | Sequence, n_pairs: int | None = 20, *,
                       candidates: int = 8, batch_size: int = 32) -> list[PromptPair]:
    """Up to ``n_pairs`` subject-swap pairs of equal token length from a known_1000-style dataset.

    ``candidates``: how many same-relation subjects of the right length are tried per fact.
    Facts are scanned in dataset order, ``batch_size`` at a time (one batched forward finds the
    known ones, one more runs their candidate swaps), and only as far as ``n_pairs`` needs.
    """
    from ..datasets import load_known_facts

    facts = load_known_facts(dataset)[0] if isinstance(dataset, (str, Path)) else list(dataset)
    tok = model.tokenizer

    def n_tokens(texts):
        texts = list(texts)
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []

    want = [answer_id(model, f.attribute) for f in facts]
    n_subj = dict(zip(range(len(facts)), n_tokens(f.subject for f in facts)))
    by_rel: dict[str, list[int]] = {}
    for i in range(len(facts)):
        by_rel.setdefault(facts[i].relation, []).append(i)
    pairs: list[PromptPair] = []
    for c0 in range(0, len(facts), batch_size):  # scan in dataset order, only as far as needed
        idx = list(range(c0, min(c0 + batch_size, len(facts))))
        checks = check_known(model, [facts[i] for i in idx], rule="first_token", batch_size=batch_size)
        known = [i for i, c in zip(idx, checks) if c.known]
        trials = []  # (a, b, swapped fact)
        for a, n_a in zip(known, n_tokens(facts[i].prompt for i in known)):
            f = facts[a]
            swaps = []
            for b in by_rel.get(f.relation, []):
                g = facts[b]
                if (b == a or g.subject == f.subject or want[b] == want[a] or n_subj[b] != n_subj[a]
                        or f.subject not in f.prompt):
                    continue
                swaps.append((a, b, replace(g, prompt=f.prompt.replace(f.subject, g.subject, 1))))
                if len(swaps) >= 4 * candidates:
                    break
            lens = n_tokens(t[2].prompt for t in swaps)
            trials += [t for t, n in zip(swaps, lens) if n == n_a][:candidates]
        checks = check_known(model, [t[2] for t in trials], rule="first_token", batch_size=batch_size)
        done = set()
        for (a, b, swapped), c in zip(trials, checks):
            if a in done or not c.known:
                continue
            done.add(a)
            f, g = facts[a], facts[b]
            pairs.append(PromptPair(f"row{f.row}", f.prompt, swapped.prompt, tok.decode([want[a]]),
                                    tok.decode([want[b]]), f.subject, g.subject, f.relation))
        if n_pairs is not None and len(pairs) >= n_pairs:
            return pairs[:n_pairs]
    return pairs
