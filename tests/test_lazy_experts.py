"""Loading reads no expert; decoding touches exactly the routed experts' pages."""

import mmap

import numpy as np

from helpers import drop_page_cache, tiny_moe_spec
from moedge.runtime import Model
from moedge.runtime.forward import RoutingTrace
from moedge.runtime.tools.residency import resident_pages


def expert_pages(store, layer, expert):
    start = store.offsets[layer, expert] // mmap.PAGESIZE
    return set(range(start, start + int(store.spans[layer, expert]) // mmap.PAGESIZE))


def test_load_reads_no_expert_and_decode_touches_only_routed_ones(exported):
    case = exported("lazy", tiny_moe_spec(expert_intermediate_size=256))  # spans of several pages
    drop_page_cache(case.bundle / "experts.bin")
    model = Model.load(case.bundle, threads=1)
    store = model.experts
    assert set(np.flatnonzero(resident_pages(store.address, store.size))) <= {0}  # the header page only
    assert store.first_touches == 0 and store.hits.sum() == 0

    routing = RoutingTrace()
    session = model.session(probe=routing)
    for token in [3, 14, 15, 92]:
        session.decode(token)

    routed = {(layer, int(e)) for layer, ids in routing.trace for e in ids.ravel()}
    assert routed == {tuple(x) for x in np.argwhere(store.touched)}
    counts = np.zeros_like(store.hits)
    for layer, ids in routing.trace:
        np.add.at(counts[layer], ids.ravel(), 1)
    np.testing.assert_array_equal(store.hits, counts)
    assert store.bytes_touched == len(routed) * int(store.spans.max())
    assert len(routed) < model.spec.n_layers * model.spec.routing.n_experts  # some experts never used

    resident = set(np.flatnonzero(resident_pages(store.address, store.size)))
    allowed = {0}.union(*(expert_pages(store, layer, e) for layer, e in routed))
    assert resident <= allowed
    for layer, e in routed:  # the routed experts were really read
        assert expert_pages(store, layer, e) <= resident
