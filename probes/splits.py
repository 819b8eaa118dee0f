"""Train / validation / test splits grouped by question (or subject).

NQ-Swap has several substitutions of the same question, and the conflict task has two rows per
example (original and substituted context).  A probe tested on a question it was trained on
measures memorisation of that question, not a conflict signal, so every split here assigns
whole **groups** to one side (Zhao et al. 2024 split by question groups too).  Groups are
shuffled with a seed and cut by cumulative row count, so the fractions hold for rows, not only
for groups.  :func:`check_disjoint` is the guard the tests (and the probe sweep) use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from interp.errors import DatasetError


@dataclass
class Split:
    """Train / validation / test row indices of one grouped split."""
    train: list[int]
    val: list[int]
    test: list[int]
    seed: int

    def sizes(self) -> dict:
        """``(train, val, test)`` sizes."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def grouped_split(groups: Sequence[str], *, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Split:
    """Row indices of train / val / test with every group on exactly one side.

    Args:
        groups: one group key per row (question or subject).
        fractions: target row fractions of train, val, test (summing to 1).
    """
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise DatasetError(f"split fractions {fractions} must be positive and sum to 1")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(str(g), []).append(i)
    keys = sorted(by_group)
    if len(keys) < 3:
        raise DatasetError(f"only {len(keys)} distinct question/subject group(s): a grouped "
                           f"train/val/test split needs at least 3; add examples (raise --limit)")
    random.Random(seed).shuffle(keys)
    n = len(groups)
    cut1, cut2 = fractions[0] * n, (fractions[0] + fractions[1]) * n
    parts: list[list[int]] = [[], [], []]
    seen = 0
    for j, k in enumerate(keys):
        rows = by_group[k]
        left = len(keys) - j
        # every side gets at least one group
        if not parts[0]:
            side = 0
        elif not parts[1] and (seen >= cut1 or left <= 2):
            side = 1
        elif not parts[2] and left <= 1:
            side = 2
        else:
            side = 0 if seen < cut1 else (1 if seen < cut2 else 2)
        parts[side].extend(rows)
        seen += len(rows)
    return Split(sorted(parts[0]), sorted(parts[1]), sorted(parts[2]), seed)


def check_disjoint(split: Split, groups: Sequence[str]) -> None:
    """Raise if any group has rows on two sides of the split."""
    sides = [{str(groups[i]) for i in part} for part in (split.train, split.val, split.test)]
    both = (sides[0] & sides[1]) | (sides[0] & sides[2]) | (sides[1] & sides[2])
    if both:
        raise DatasetError(f"{len(both)} group(s) on two sides of the split, e.g. {sorted(both)[:3]}")
