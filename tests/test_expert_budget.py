"""A memory budget for experts: the experts whose layer comes round last are released, results do not change."""

import numpy as np
import pytest

from helpers import PAGE, mapped_bytes, tiny_moe_spec
from moedge.runtime import InputError, Model
from moedge.runtime.expert_store import _release_order


def test_budget_caps_mapped_experts_and_keeps_results(exported):
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    tokens = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]
    free = Model.load(case.bundle, threads=1)
    session = free.session()
    reference = [session.decode(t) for t in tokens]
    span, unbudgeted = int(free.experts.spans.max()), mapped_bytes(free.experts)
    assert unbudgeted > 6 * span and free.experts.releases == 0  # without a budget routed experts stay

    capped = Model.load(case.bundle, threads=1, expert_budget=3 * span)
    session = capped.session()
    for token, want in zip(tokens, reference, strict=True):
        np.testing.assert_array_equal(session.decode(token), want)
        assert capped.experts.mapped.sum() <= 3
        assert mapped_bytes(capped.experts) <= 3 * span  # the slots that hold pages
    assert capped.experts.releases > 0


def test_release_order_keeps_the_experts_needed_soonest():
    """3 layers x 2 experts (flat index = layer * 2 + expert); layer 1 just routed flat expert 2 (clock 9).
    Turns until each expert's layer comes round plus steps since its last use: 3 (layer 1) 3 + 5, 4 (layer 2)
    1 + 7, 5: 1 + 6, 0 (layer 0) 2 + 4, 1: 2 + 3, released in that order (a tie goes to the layer that comes
    round last); the expert routed now only when nothing else is left."""
    last_use = np.array([5, 6, 9, 4, 2, 3])  # least recently used alone: 4, 5, 3, 0, 1; by layer alone: 3, 0, 1, 4
    order = _release_order(np.ones(6, bool), last_use, np.ones(6, np.int64), 0, 1, 2, 9)
    assert order == [3, 4, 5, 0, 1, 2]
    mapped = np.array([True, False, True, True, False, True])
    assert _release_order(mapped, last_use, np.ones(6, np.int64), 2, 1, 2, 9) == [3, 5]
    assert mapped.tolist() == [True, False, True, False, False, False]


def test_a_budget_below_one_tokens_experts_still_hits(exported):
    """Below the experts one token routes to (every layer's k), least recently used across layers would release
    each expert before its layer comes round again and never hit; the store's order keeps a stable part."""
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    model = Model.load(case.bundle, threads=1)
    spec = model.spec
    token_bytes = int(model.experts.spans.max()) * spec.routing.top_k * len(spec.moe_layers)
    capped = Model.load(case.bundle, threads=1, expert_budget=token_bytes * 3 // 4)
    session = capped.session()
    tokens = np.random.default_rng(2).integers(0, 200, 60).tolist()
    for t in tokens:
        session.decode(t)
    store = capped.experts
    routed = len(tokens) * spec.routing.top_k * len(spec.moe_layers)
    assert store.fetches < routed * 0.9  # the replayed LRU order: every routed expert fetched


def test_budget_below_one_layer_is_refused(exported):
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    with pytest.raises(InputError, match="expert budget"):
        Model.load(case.bundle, expert_budget=1)


class _Recorder:
    """Stands in for the store's mapping: records each madvise, then makes it on the real mapping."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def madvise(self, advice, start, length):
        self.calls.append((advice, start, length))
        self.real.madvise(advice, start, length)


def test_madvise_starts_on_a_page_whatever_the_page_size(exported, monkeypatch):
    """A kernel with 16 KiB pages (a Raspberry Pi 5's, Apple silicon) refuses madvise at an expert's 4 KiB
    boundary (EINVAL, which ended every MoE run there): each read from the map covers the expert's span widened
    to whole pages of the machine's size, and under a budget every slot starts on such a page."""
    from moedge.runtime import expert_store

    monkeypatch.setattr(expert_store, "PAGE_SIZE", 4 * PAGE)
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    model = Model.load(case.bundle, threads=1)
    store = model.experts
    recorder = store._map = _Recorder(store._map)
    session = model.session()
    for token in [3, 14, 15, 92, 65, 35, 89, 79]:
        session.decode(token)
    assert len(recorder.calls) == store.fetches > 0
    assert any(offset % (4 * PAGE) for offset in store.offsets[store.touched])  # some needed widening
    assert all(start % (4 * PAGE) == 0 for _, start, _ in recorder.calls)
    covered = {(start, start + length) for _, start, length in recorder.calls}
    for offset, span in zip(store.offsets[store.touched], store.spans[store.touched], strict=True):
        assert any(lo <= offset and offset + span <= hi for lo, hi in covered)
    slots = Model.load(case.bundle, threads=1, expert_budget=3 * int(store.spans.max())).experts._slots
    assert slots.slot_bytes % (4 * PAGE) == 0 and slots.slot_bytes >= store.spans.max()
