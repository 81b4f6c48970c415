"""FP-growth on hand examples against brute-force counting."""

from __future__ import annotations

import itertools

import pytest

from lightning_distill.graphs import frequent_itemsets

TRANSACTIONS = [{1, 2, 5}, {2, 4}, {2, 3}, {1, 2, 4}, {1, 3}, {2, 3}, {1, 3}, {1, 2, 3, 5}, {1, 2, 3}]


def brute_force(transactions, min_count):
    items = sorted({i for t in transactions for i in t})
    found = {}
    for size in range(1, len(items) + 1):
        for combo in itertools.combinations(items, size):
            count = sum(set(combo) <= t for t in transactions)
            if count >= min_count:
                found[frozenset(combo)] = count
    return found


def test_hand_example_from_han_et_al():
    # The textbook example (Han, Kamber, Pei): min support count 2 of 9 transactions.
    found = {s.items: s.count for s in frequent_itemsets(TRANSACTIONS, min_support=2 / 9)}
    assert found[frozenset({1, 2, 5})] == 2
    assert found[frozenset({1, 2, 3})] == 2
    assert found[frozenset({2})] == 7
    assert frozenset({3, 4}) not in found
    assert found == brute_force(TRANSACTIONS, 2)


@pytest.mark.parametrize("support", [0.25, 0.4, 0.5, 1.0])
def test_fpgrowth_equals_brute_force(support):
    import math

    found = {s.items: s.count for s in frequent_itemsets(TRANSACTIONS, support)}
    assert found == brute_force(TRANSACTIONS, math.ceil(support * len(TRANSACTIONS)))


def test_results_are_sorted_by_count_and_max_len_caps_the_size():
    found = frequent_itemsets(TRANSACTIONS, 2 / 9, max_len=2)
    assert max(len(s.items) for s in found) == 2
    counts = [s.count for s in found]
    assert counts == sorted(counts, reverse=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="min_support"):
        frequent_itemsets(TRANSACTIONS, 0.0)
    with pytest.raises(ValueError, match="min_support"):
        frequent_itemsets(TRANSACTIONS, 1.5)
    with pytest.raises(ValueError, match="empty"):
        frequent_itemsets([], 0.5)
    with pytest.raises(ValueError, match="max_len"):
        frequent_itemsets(TRANSACTIONS, 0.5, max_len=0)
