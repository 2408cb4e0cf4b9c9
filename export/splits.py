"""Which evaluation data may be used for choices, and which is kept for the figures we report.

``portraits/val`` picked the deeplabv3plus checkpoints and working sizes, and the shared DAVIS-style
clips (``videos_gt``) picked defaults such as edge refinement, so neither is a clean test any more
(issue 18).  Each is now cut in two, by a fixed rule that does not look at the data: the items are
ranked by the SHA-256 of their name (with a salt), the first half by that rank is ``holdout`` and
the rest ``select``.  Training may validate on ``select`` (checkpoints, sizes, thresholds); only
the final figures are computed on ``holdout``, and nothing is chosen by them.

Standard library only: the training scripts (torch) and the benchmarks (no torch) both import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SALT = "backdrop-holdout-v1"
PARTS = ("select", "holdout", "all")


def _rank(name: str) -> str:
    return hashlib.sha256(f"{SALT}:{name}".encode()).hexdigest()


def holdout(names: Iterable[str]) -> set[str]:
    """The held-out half of ``names`` (the first ⌈n/2⌉ by salted hash; stable as items are added
    only in that an item's rank never changes)."""
    ranked = sorted(set(names), key=_rank)
    return set(ranked[: (len(ranked) + 1) // 2])


def part_of(names: Iterable[str], part: str) -> list[str]:
    """``names`` (sorted) restricted to ``part``: ``select``, ``holdout`` or ``all``."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    names = sorted(set(names))
    if part == "all":
        return names
    held = holdout(names)
    return [n for n in names if (n in held) == (part == "holdout")]
