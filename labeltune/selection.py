"""Which rows a person should label next: pure uncertainty maths over label probabilities.

Each row is a ``{label: probability}`` mapping (the ``p_<label>`` columns ``label --mode score`` writes).
A strategy ranks rows, most worth a person's time first:

- ``margin``: the smallest gap between the two most probable labels first (1 - (p1 - p2) is the
  uncertainty);
- ``entropy``: the largest Shannon entropy of the distribution first (in nats);
- ``random``: a seeded shuffle (the baseline every other strategy must beat);
- ``disagreement``: two sources of predictions for the same rows (two runs, or one run before and after
  calibration): rows whose argmax labels differ first, then by the total-variation distance
  0.5 * sum |p - q| between the two distributions.

A row without probabilities (a failed answer) ranks first under every strategy but random: the model
said nothing usable about it, so a person's answer is worth the most there. Ties keep file order.
``select`` optionally stratifies the budget by predicted label (each label gets one row, then a share of
the rest in proportion to its rows, by largest remainder; a label short of rows passes its share on).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

STRATEGIES = ("margin", "entropy", "random", "disagreement")

Probs = dict[str, float] | None


def margin_uncertainty(probs: Probs) -> float:
    """1 - (p1 - p2): 1 when the two best labels tie, 0 when one label has all the mass."""
    if not probs:
        return math.inf
    top = sorted(probs.values(), reverse=True) + [0.0]
    return 1.0 - (top[0] - top[1])


def entropy(probs: Probs) -> float:
    """Shannon entropy in nats of the (renormalised) distribution."""
    if not probs:
        return math.inf
    total = sum(probs.values())
    if total <= 0:
        return math.inf
    return -sum((p / total) * math.log(p / total) for p in probs.values() if p > 0)


def disagreement(probs: Probs, other: Probs) -> float:
    """1 + total variation when the two argmax labels differ, the total variation alone when they agree
    (so every disagreeing row ranks before every agreeing one)."""
    if not probs or not other:
        return math.inf
    labels = set(probs) | set(other)
    tv = 0.5 * sum(abs(probs.get(k, 0.0) - other.get(k, 0.0)) for k in labels)
    differ = max(probs, key=probs.get) != max(other, key=other.get)
    return tv + (1.0 if differ else 0.0)


def uncertainty(
    strategy: str, probs: list[Probs], other: list[Probs] | None = None, seed: int = 0
) -> list[float]:
    """One number per row, larger = ask a person sooner."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "margin":
        return [margin_uncertainty(p) for p in probs]
    if strategy == "entropy":
        return [entropy(p) for p in probs]
    if strategy == "random":
        rng = random.Random(seed)
        return [rng.random() for _ in probs]
    if other is None:
        raise ValueError("strategy disagreement needs a second prediction file (--other) for the same rows")
    if len(other) != len(probs):
        raise ValueError(
            f"the two prediction sources have {len(probs)} and {len(other)} rows; they must match"
        )
    return [disagreement(p, q) for p, q in zip(probs, other, strict=True)]


def ranked(scores: list[float], candidates: list[int]) -> list[int]:
    """The candidate row indices, highest score first, ties in file order."""
    return sorted(candidates, key=lambda i: (-scores[i], i))


def shares(budget: int, sizes: dict[str, int]) -> dict[str, int]:
    """The budget split over groups: one row each first (when the budget allows; so a rare predicted label
    is looked at too), the rest in proportion to the rows each has left (largest remainder), never more
    than a group holds; what a small group cannot take goes to the others."""
    budget = min(budget, sum(sizes.values()))
    out = {k: 0 for k in sizes}
    if budget >= sum(1 for n in sizes.values() if n > 0):
        out = {k: min(1, n) for k, n in sizes.items()}
        budget -= sum(out.values())
    while budget > 0:
        open_groups = {k: n - out[k] for k, n in sizes.items() if n > out[k]}
        total = sum(open_groups.values())
        exact = {k: budget * n / total for k, n in open_groups.items()}
        given = {k: min(int(v), open_groups[k]) for k, v in exact.items()}
        left = budget - sum(given.values())
        for k in sorted(exact, key=lambda k: (-(exact[k] - int(exact[k])), k)):
            if left == 0:
                break
            if given[k] < open_groups[k]:
                given[k] += 1
                left -= 1
        for k, n in given.items():
            out[k] += n
        budget -= sum(given.values())
    return out


def select(
    scores: list[float],
    budget: int,
    candidates: list[int] | None = None,
    strata: list[str | None] | None = None,
) -> list[int]:
    """The `budget` candidate rows with the highest scores, in rank order; with `strata` (a predicted
    label per row), the budget is shared out over the labels first and the ranks are kept within each."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    candidates = list(range(len(scores))) if candidates is None else candidates
    if strata is None:
        return ranked(scores, candidates)[:budget]
    groups: dict[str, list[int]] = defaultdict(list)
    for i in candidates:
        groups[str(strata[i])].append(i)
    quota = shares(budget, {k: len(v) for k, v in groups.items()})
    chosen = [i for k, rows in groups.items() for i in ranked(scores, rows)[: quota[k]]]
    return ranked(scores, chosen)
