"""Chunking and side-by-side workers (pipeline.parallel)."""

from __future__ import annotations

import pytest
import torch

from pipeline.parallel import map_chunks, split


@pytest.mark.parametrize("n, size, workers", [(135, 48, 2), (10, 3, 2), (5, 64, 2), (1, 4, 2),
                                              (7, 2, 3), (100, 100, 1), (0, 4, 2)])
def test_split_covers_every_item_once_in_bounded_balanced_chunks(n, size, workers):
    chunks = split(n, size, workers)
    assert [i for r in chunks for i in r] == list(range(n))
    assert all(1 <= len(r) <= size for r in chunks)
    if chunks:
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_split_makes_a_multiple_of_the_workers_when_it_can():
    # 135 models of at most 48: 3 chunks would leave one of 2 workers idle a third of the time
    assert len(split(135, 48, 2)) == 4
    assert len(split(5, 64, 2)) == 2
    assert len(split(3, 1, 2)) == 3          # cannot: every chunk holds at least one item


def test_map_chunks_keeps_order_and_restores_threads():
    before = torch.get_num_threads()
    out = map_chunks(lambda r: [i * i for i in r], split(10, 3, 2), 2)
    assert [v for part in out for v in part] == [i * i for i in range(10)]
    assert torch.get_num_threads() == before
