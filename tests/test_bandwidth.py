"""The bench's bandwidth probe: every way of reading sums each element once, and the roofline takes the fastest."""

import numpy as np
import pytest

from moedge.runtime.numba_cache import ROW_PREFETCH
from moedge.runtime.tools import bandwidth
from moedge.runtime.tools.bandwidth import BLOCK, WAYS, BandwidthProbe, _blocked_sum, read_bandwidths, way_name


def test_the_ways_are_one_plain_stream_and_four_asking_ahead_as_the_row_dots_do():
    assert list(WAYS) == [(1, 0), (4, ROW_PREFETCH.int8)]
    assert way_name((1, 0)) == "1 stream" and way_name((4, 1024)) == "4 streams, 1024 bytes ahead"


@pytest.mark.parametrize("streams, ahead", [(1, 0), (4, 0), (4, 256), (4, 2048), (2, 100_000)])
def test_every_way_reads_each_element_of_whole_blocks_once(streams, ahead):
    """Small integers, so float32 sums are exact: an element skipped or read twice changes the sum (and the
    elements past the last whole block are not read)."""
    values = np.random.default_rng(0).integers(0, 4, 3 * BLOCK + 100).astype(np.float32)
    assert _blocked_sum(values, streams, ahead) == values[:3 * BLOCK].sum(dtype=np.float64)


def test_the_probe_samples_every_way_and_keeps_the_fastest(monkeypatch):
    rates = iter([10.0, 14.0, 12.0, 9.0] * 10)
    monkeypatch.setattr(BandwidthProbe, "_read", lambda self, way: next(rates))
    monkeypatch.setattr(bandwidth, "WAYS", ((1, 0), (4, 512)))
    probe = BandwidthProbe(1, 4 * BLOCK * 4)  # its first sample (10, 14) is the compile's, not counted below
    assert probe.sample() == 12.0 and probe.rates == {(1, 0): 12.0, (4, 512): 9.0}
    assert [buf.nbytes for buf in probe.buffers.values()] == [4 * BLOCK * 4] * 2  # a buffer per way
    assert probe.buffers[(1, 0)] is not probe.buffers[(4, 512)]
    assert read_bandwidths(1, 4 * BLOCK * 4, repeat=2) == {"1 stream": 12.0, "4 streams, 512 bytes ahead": 14.0}
