"""Experts under a budget live in slots of anonymous memory, read with O_DIRECT where the file system allows it:
a prompt whose layer routes to more experts than the slots hold goes through them in batches, a token's experts
are computed as their reads land, and the results are those of an unbudgeted run."""

import os

import numpy as np
import pytest

from helpers import mapped_bytes, tiny_moe_spec
from moedge.runtime import BundleError, Model

SPEC = tiny_moe_spec(expert_intermediate_size=256)
TOKENS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]


def _span(bundle) -> int:
    return int(Model.load(bundle, threads=1).experts.spans.max())


def test_a_prompt_routed_to_more_experts_than_the_slots_hold(exported):
    case = exported("slots", SPEC)
    prompt = list(range(40))
    want = Model.load(case.bundle, threads=1).session().prefill(prompt)
    model = Model.load(case.bundle, threads=1, expert_budget=3 * _span(case.bundle))
    store = model.experts
    got = model.session().prefill(prompt)
    routed = (store.hits > 0).sum(axis=1)
    assert store.capacity < routed.max()  # a layer's experts went through in batches
    np.testing.assert_array_equal(got, want)
    assert mapped_bytes(store) <= store.budget_bytes


@pytest.mark.parametrize("direct", [True, False])
def test_slots_are_read_past_the_page_cache_where_they_can_be(exported, monkeypatch, direct):
    """O_DIRECT where the file system takes it (not tmpfs), plain reads elsewhere: the same logits either way."""
    case = exported("slots", SPEC)
    session = Model.load(case.bundle, threads=1).session()
    want = [session.decode(t) for t in TOKENS]
    if not direct:
        monkeypatch.setattr("moedge.runtime.expert_slots.direct_io", lambda fd: False)
    else:
        try:  # can this system and file system do it at all?
            os.close(os.open(case.bundle / "experts.bin", os.O_RDONLY | os.O_DIRECT))
        except (AttributeError, OSError):
            pytest.skip("no O_DIRECT here (the platform or the test folder's file system)")
    model = Model.load(case.bundle, threads=1, expert_budget=3 * _span(case.bundle))
    assert model.experts.direct_reads == direct
    session = model.session()
    for token, logits in zip(TOKENS, want, strict=True):
        np.testing.assert_array_equal(session.decode(token), logits)
    assert model.experts.releases > 0


def test_an_experts_file_cut_short_after_loading(exported, tmp_path):
    """A read that meets the end of the file inside an expert says the file is truncated."""
    case = exported("slots", SPEC)
    bundle = tmp_path / "b.moedge"
    bundle.mkdir()
    for path in case.bundle.iterdir():
        (bundle / path.name).write_bytes(path.read_bytes())
    model = Model.load(bundle, threads=1, expert_budget=3 * _span(bundle))
    os.truncate(bundle / "experts.bin", 8192)  # only the header and the first expert's start are left
    with pytest.raises(BundleError, match="experts.bin: the file ends inside an expert .* truncated"):
        model.session().prefill(list(range(20)))


def test_hold_keeps_the_experts_it_is_given(exported):
    """With room for two experts, holding two (some held already, some not) releases others, never them, and
    leaves each one's bytes, as the file has them, where the kernels read it."""
    case = exported("slots", SPEC)
    store = Model.load(case.bundle, threads=1, expert_budget=2 * _span(case.bundle)).experts
    data = (case.bundle / "experts.bin").read_bytes()
    assert store.capacity == 2
    for pair in ([0, 1], [1, 2], [2, 1], [3, 0], [0, 3], [3, 0]):
        experts = np.array(pair)
        store.touch(0, experts[None])
        store.hold(0, experts)
        assert store.mapped[0, experts].all() and store.mapped.sum() == 2
        for e in pair:
            start, span = store.layers[0].weight_start[e], store.spans[0, e]
            offset = store.offsets[0, e]
            assert store.layers[0].weights[start:start + span].tobytes() == data[offset:offset + span]


def test_the_time_spent_waiting_for_reads_is_counted(exported, monkeypatch):
    """`read_wait` adds up what the kernels' thread blocked on reads still in flight; an expert already in its
    slot adds nothing."""
    import time

    from moedge.runtime.expert_slots import ExpertSlots

    read = ExpertSlots._read
    monkeypatch.setattr(ExpertSlots, "_read", lambda self, *a: (time.sleep(0.05), read(self, *a)))  # a slow disk
    case = exported("slots", SPEC)
    store = Model.load(case.bundle, threads=1, expert_budget=2 * _span(case.bundle)).experts
    experts = np.array([0, 1])
    store.touch(0, experts[None])
    store.hold(0, experts)  # two reads on four I/O threads: waited for together
    assert 0.04 < store.read_wait < 1.0
    waited = store.read_wait
    store.hold(0, experts)  # held already: nothing read, nothing waited for
    assert store.read_wait == waited
