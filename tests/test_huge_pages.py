"""Weights on 2 MiB pages: which ranges are advised, which blocks a first use reads, and that experts large enough
take that path without changing a logit."""

import mmap

import numpy as np
import pytest

from helpers import tiny_moe_spec
from moedge.runtime import Model, expert_store
from moedge.runtime.huge_pages import HUGE_PAGE, MADV_POPULATE_READ, map_on_huge_pages, read_blocks


class FakeMap:
    """A file map of `size` bytes that records its madvise calls (and can refuse them)."""

    def __init__(self, size: int, refuse: bool = False):
        self.size, self.refuse, self.calls = size, refuse, []

    def __len__(self):
        return self.size

    def madvise(self, option, start=0, length=0):
        if self.refuse:
            raise OSError(22, "Invalid argument")
        self.calls.append((option, start, length))


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no transparent huge pages on this system")
def test_only_whole_blocks_inside_the_range_are_advised():
    region = FakeMap(5 * HUGE_PAGE + 123)
    assert map_on_huge_pages(region)
    assert region.calls == [(mmap.MADV_HUGEPAGE, 0, 5 * HUGE_PAGE)]  # the partial last block stays on base pages
    region.calls.clear()
    assert map_on_huge_pages(region, HUGE_PAGE + 1, 4 * HUGE_PAGE - 1)
    assert region.calls == [(mmap.MADV_HUGEPAGE, 2 * HUGE_PAGE, HUGE_PAGE)]
    assert not map_on_huge_pages(region, HUGE_PAGE + 1, 2 * HUGE_PAGE + 5)  # no whole block: nothing asked
    assert not map_on_huge_pages(FakeMap(4 * HUGE_PAGE, refuse=True))  # a kernel without them: False, no error


def test_a_first_use_reads_the_blocks_its_span_touches():
    region = FakeMap(8 * HUGE_PAGE)
    assert read_blocks(region, 3 * HUGE_PAGE - 4096, 8192)  # straddles the end of block 2
    assert region.calls == [(MADV_POPULATE_READ, 2 * HUGE_PAGE, HUGE_PAGE + 4096)]
    tail = FakeMap(2 * HUGE_PAGE + 100)
    assert read_blocks(tail, 2 * HUGE_PAGE, 100)
    assert tail.calls == [(MADV_POPULATE_READ, 2 * HUGE_PAGE, 100)]
    assert not read_blocks(FakeMap(HUGE_PAGE, refuse=True), 0, 10)  # before Linux 5.14: not read, no error


def test_large_experts_are_read_in_blocks_with_the_same_logits(exported, monkeypatch):
    """Experts at or above `HUGE_PAGES_MIN_SPAN` (lowered here to the tiny model's) go on 2 MiB pages: a first
    use reads its blocks instead of asking for its pages (MADV_WILLNEED); the logits do not change. Smaller
    experts, and any under a budget, keep their spans on base-size pages."""
    bundle = exported("huge", tiny_moe_spec()).bundle
    tokens = [3, 14, 15, 92, 65]
    plain = Model.load(bundle, threads=1)
    assert not plain.experts._huge
    expected = plain.session().decode(tokens[0])

    reads = []
    monkeypatch.setattr(expert_store, "HUGE_PAGES_MIN_SPAN", 0)
    monkeypatch.setattr(expert_store, "map_on_huge_pages", lambda region: True)  # tmpfs may refuse the advice
    monkeypatch.setattr(expert_store, "read_blocks", lambda region, start, n: reads.append((start, n)) or True)
    huge = Model.load(bundle, threads=1)
    store = huge.experts
    assert store._huge and not Model.load(bundle, threads=1, expert_budget=10**6).experts._huge
    session = huge.session()
    np.testing.assert_array_equal(session.decode(tokens[0]), expected)
    first_uses = {(int(store.offsets[layer, e]), int(store.spans[layer, e])) for layer, e in np.argwhere(store.touched)}
    assert set(reads) == first_uses and len(reads) == len(first_uses)  # each expert read once, at its first use
    for t in tokens[1:]:
        session.decode(t)
    assert len(reads) == int(store.touched.sum())


def test_where_blocks_cannot_be_read_a_first_use_asks_for_its_span(exported, monkeypatch):
    """A kernel without MADV_POPULATE_READ (before Linux 5.14): the span is asked for as on base-size pages, so a
    first use does not fault its pages in one by one (the map reads no ahead)."""
    bundle = exported("huge", tiny_moe_spec()).bundle
    monkeypatch.setattr(expert_store, "HUGE_PAGES_MIN_SPAN", 0)
    monkeypatch.setattr(expert_store, "map_on_huge_pages", lambda region: True)
    monkeypatch.setattr(expert_store, "read_blocks", lambda region, start, length: False)
    asked = []
    monkeypatch.setattr(expert_store, "whole_pages", lambda start, length, page: asked.append(start) or (0, page))
    model = Model.load(bundle, threads=1)
    model.session().decode(3)
    store = model.experts
    assert sorted(asked) == sorted(int(store.offsets[layer, e]) for layer, e in np.argwhere(store.touched))
