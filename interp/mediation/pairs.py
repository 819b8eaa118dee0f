"""Clean / corrupted prompt pairs for patching over a dataset: subject swaps of equal token length.

Activation patching compares two prompts position by position, so they must have the same
number of tokens.  For a known_1000-style fact set, a *subject swap* keeps fact A's prompt and
replaces its subject with the subject of another fact B of the **same relation** (so the
question is the same and only the entity changes), keeping the pair only when

* the model knows A (its clean top-1 token is the first token of ``" " + attribute``),
* the swapped prompt has exactly as many tokens as A's prompt, and
* the model knows B in A's wording: its top-1 on the swapped prompt is the first token of B's
  attribute, and that differs from A's answer (it is the ``wrong`` answer of the logit
  difference) — so both runs are facts the model recalls, and the pair contrasts two answers.

Pairs are taken in dataset order, one per fact A, with the first B that qualifies — the same
facts give the same pairs on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence


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

    def top1(prompts):
        out = []
        for i in range(0, len(prompts), batch_size):
            out += model.run(prompts[i:i + batch_size]).logits.argmax(-1).tolist()
        return out

    def n_tokens(texts):
        texts = list(texts)
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []

    want = [model.encode_target(" " + f.attribute.strip())[0] for f in facts]
    n_subj = dict(zip(range(len(facts)), n_tokens(f.subject for f in facts)))
    by_rel: dict[str, list[int]] = {}
    for i in range(len(facts)):
        by_rel.setdefault(facts[i].relation, []).append(i)
    pairs: list[PromptPair] = []
    for c0 in range(0, len(facts), batch_size):  # scan in dataset order, only as far as needed
        idx = list(range(c0, min(c0 + batch_size, len(facts))))
        known = [i for i, t in zip(idx, top1([facts[i].prompt for i in idx])) if t == want[i]]
        trials = []  # (a, b, corrupt)
        for a, n_a in zip(known, n_tokens(facts[i].prompt for i in known)):
            f = facts[a]
            swaps = []
            for b in by_rel.get(f.relation, []):
                g = facts[b]
                if (b == a or g.subject == f.subject or want[b] == want[a] or n_subj[b] != n_subj[a]
                        or f.subject not in f.prompt):
                    continue
                swaps.append((a, b, f.prompt.replace(f.subject, g.subject, 1)))
                if len(swaps) >= 4 * candidates:
                    break
            lens = n_tokens(c for _, _, c in swaps)
            trials += [t for t, n in zip(swaps, lens) if n == n_a][:candidates]
        tops = top1([c for _, _, c in trials])
        done = set()
        for (a, b, corrupt), t in zip(trials, tops):
            if a in done or t != want[b]:
                continue
            done.add(a)
            f, g = facts[a], facts[b]
            pairs.append(PromptPair(f"row{f.row}", f.prompt, corrupt, tok.decode([want[a]]), tok.decode([want[b]]),
                                    f.subject, g.subject, f.relation))
        if n_pairs is not None and len(pairs) >= n_pairs:
            return pairs[:n_pairs]
    return pairs
