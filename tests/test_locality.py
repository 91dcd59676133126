"""Expert-cache locality of a token stream: LRU replay per layer and the next-layer guesses' recall."""

import numpy as np

from moedge.runtime.tools.locality import guess_recall, lru_hit_rate, optimal_hit_rate


def _window(*rows, layer=0):
    return {layer: np.array(rows, dtype=np.int64)}


def test_lru_replay_counts_hits_in_decode_order():
    # 4 experts, k = 1; tokens route to 0, 1, 0, 2, 1
    stream = [_window([0], [1], [0], [2], [1])]
    assert lru_hit_rate(stream, 4, 0.5) == 1 / 5  # two slots: 0 hits once; 2 pushes 1 out before it returns
    assert lru_hit_rate(stream, 4, 0.75) == 2 / 5  # three slots: 0 and 1 both come back cached
    assert lru_hit_rate(stream, 4, 0.25) == 0.0  # one slot: every change of expert misses


def test_lru_keeps_each_layer_apart_and_windows_in_one_cache():
    first = {0: np.array([[0, 1]]), 1: np.array([[0, 1]])}
    second = {0: np.array([[0, 1]]), 1: np.array([[2, 3]])}
    # k = 2 experts of 8 per token: a quarter cached holds exactly one token's pair per layer
    assert lru_hit_rate([first, second], 8, 0.25) == 2 / 8  # layer 0's pair comes back, layer 1's changes


def test_guess_recall_counts_named_experts_in_any_order():
    routes = [{1: np.array([[0, 1], [2, 3]]), 2: np.array([[4, 5], [6, 7]])}]
    guesses = [{1: np.array([[1, 0], [2, 0]])}]  # layer 2 had no guess: it does not count
    assert guess_recall(routes, guesses) == 3 / 4
    assert guess_recall(routes, [{}]) is None


def test_knowing_the_future_hits_at_least_as_often_as_lru():
    # 4 experts, k = 1, two slots: 0 1 2 0 1 2 0 1 2 — LRU always pushes out the one needed next
    stream = [_window(*[[e] for e in [0, 1, 2] * 3])]
    assert lru_hit_rate(stream, 4, 0.5) == 0.0
    # Belady keeps 0 for its return at token 3 (2 is needed last), then 1 at token 4, ...: 3 hits of 9
    assert optimal_hit_rate(stream, 4, 0.5) == 3 / 9
    assert optimal_hit_rate(stream, 4, 0.75) == 6 / 9  # three slots: every return hits
    assert optimal_hit_rate(stream, 4, 0.25) == 0.0  # one slot: every change of expert misses


def test_knowing_the_future_never_evicts_what_the_same_token_needs():
    # k = 2 of 8, a quarter cached = one token's pair: the second token's pair replaces the first entirely
    stream = [_window([0, 1], [2, 3], [0, 1])]
    assert optimal_hit_rate(stream, 8, 0.25) == 0.0
    # half cached (four): both pairs fit, the third token hits twice
    assert optimal_hit_rate(stream, 8, 0.5) == 2 / 6
    # windows follow each other in one cache, each layer apart
    assert optimal_hit_rate([{0: np.array([[0, 1]]), 1: np.array([[4, 5]])},
                             {0: np.array([[0, 1]]), 1: np.array([[6, 7]])}], 8, 0.25) == 2 / 8
