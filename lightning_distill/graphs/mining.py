"""Frequent itemset mining with FP-growth (``mlxtend.frequent_patterns.fpgrowth``).

Mirage mines, per class, the sets of computation trees that occur together in many graphs: each
graph is a *transaction* (the set of its tree ids) and a tree set is frequent when at least
``min_support`` of the class's graphs contain all of its trees.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import pandas as pd
from mlxtend.frequent_patterns import fpgrowth

__all__ = ["FrequentSet", "frequent_itemsets"]


class FrequentSet(NamedTuple):
    """A frequent itemset and how many transactions contain it."""

    items: frozenset
    count: int


def frequent_itemsets(
    transactions: Sequence[set[Hashable] | frozenset[Hashable]],
    min_support: float,
    max_len: int | None = None,
) -> list[FrequentSet]:
    """All itemsets contained in at least ``ceil(min_support * len(transactions))`` transactions.

    Args:
        transactions: the item sets (one per graph).
        min_support: the minimum share of transactions, in ``(0, 1]``.
        max_len: the largest itemset size to report (``None``: no limit).

    Returns:
        The frequent itemsets, most frequent first (ties: smaller first, then by sorted items).

    Raises:
        ValueError: no transactions, ``min_support`` outside ``(0, 1]`` or ``max_len < 1``.

    Example:
        >>> found = frequent_itemsets([{"a", "b"}, {"a", "c"}, {"a", "b", "c"}, {"b"}], min_support=0.5)
        >>> [(sorted(s.items), s.count) for s in found]
        [(['a'], 3), (['b'], 3), (['c'], 2), (['a', 'b'], 2), (['a', 'c'], 2)]
    """
    if len(transactions) == 0:
        raise ValueError("`transactions` is empty; FP-growth needs at least one transaction.")
    if not 0.0 < min_support <= 1.0:
        raise ValueError(f"`min_support` must be in (0, 1], got {min_support}.")
    if max_len is not None and max_len < 1:
        raise ValueError(f"`max_len` must be >= 1 or None, got {max_len}.")
    items = sorted({item for t in transactions for item in t}, key=repr)
    if not items:
        return []
    column = {item: k for k, item in enumerate(items)}
    table = [[False] * len(items) for _ in transactions]
    for row, t in zip(table, transactions):
        for item in t:
            row[column[item]] = True
    frame = pd.DataFrame(table, columns=range(len(items)), dtype=bool)
    n = len(transactions)
    # mlxtend compares support >= min_support; ask for the exact share of the integer count.
    needed = max(1, math.ceil(min_support * n - 1e-9))
    result = fpgrowth(frame, min_support=needed / n, use_colnames=True, max_len=max_len)
    found = [
        FrequentSet(frozenset(items[k] for k in itemset), round(support * n))
        for support, itemset in zip(result["support"], result["itemsets"])
    ]
    found.sort(key=lambda s: (-s.count, len(s.items), sorted(map(repr, s.items))))
    return found
