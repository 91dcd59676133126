"""Reading ahead under an expert budget: the next MoE layer's experts guessed from the current hidden state
(its router after its norm), read before it routes; results never depend on the guess."""

import gc

import numpy as np

from helpers import drop_page_cache, mapped_bytes, tiny_moe_spec
from moedge.runtime import Model
from moedge.runtime.forward import RoutingTrace
from moedge.runtime.kv_cache import KVCache
from moedge.runtime.read_ahead_governor import ReadAheadGovernor
from moedge.runtime.routing import route
from moedge.runtime.tensor_names import layer_names

TOKENS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 53, 58, 97, 93]
SPEC = tiny_moe_spec(expert_intermediate_size=256)


def test_guess_is_the_next_layers_routing_of_the_state_it_sees(exported):
    """Given the very state layer j normalizes for its router, the guess made at the layer before j is
    exactly layer j's routing: the guess uses j's norm, j's router and the top k."""
    weights = Model.load(exported("read_ahead", SPEC).bundle, threads=1).weights
    predictor = weights.predictor
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((6, SPEC.hidden_size)).astype(np.float32)
    for layer, j in predictor.next.items():
        out = weights.graph_layers(j, hidden, weights.graph_layers.tables(0, 6), KVCache(SPEC))
        state = out.ffn_in / weights.predictor.norm[j]  # = the state / its RMS: normalizing it again changes nothing
        ids, _ = route(out.router_logits, SPEC.routing)
        np.testing.assert_array_equal(np.sort(predictor.guess(layer, state), axis=1), np.sort(ids, axis=1))
        assert layer_names(j).router.startswith(f"layers.{j}.")


def test_read_ahead_keeps_logits_and_the_budget(exported):
    case = exported("read_ahead", SPEC)
    free = Model.load(case.bundle, threads=1, read_ahead=True)
    session = free.session()
    reference = [session.decode(t) for t in TOKENS]
    span = int(free.experts.spans.max())
    assert not free.weights.reading_ahead  # no budget: every expert stays once read, nothing to guess for
    del free, session
    gc.collect()
    budget = 5 * span  # two layers' top-2 experts and one more
    for read_ahead in (True, False, "auto"):
        drop_page_cache(case.bundle / "experts.bin")
        capped = Model.load(case.bundle, threads=1, expert_budget=budget, read_ahead=read_ahead)
        if read_ahead == "auto":  # trials of 4 steps each way: the tokens' steps 5-8 read ahead, whatever wins
            capped.weights.governor = ReadAheadGovernor(trial_steps=4, first_keep=4, clear_loss=float("inf"),
                                                         first_trial_after=0)
        session = capped.session()
        modes = []
        for token, want in zip(TOKENS, reference, strict=True):
            modes.append(capped.weights.reading_ahead)
            np.testing.assert_array_equal(session.decode(token), want)
            assert capped.experts.mapped.sum() <= 5
            assert mapped_bytes(capped.experts) <= budget
        store = capped.experts
        if read_ahead is False:
            assert not any(modes) and store.read_aheads == 0 and store.guess_recall is None
            continue
        assert all(modes) if read_ahead is True else modes[:8] == [False] * 4 + [True] * 4
        assert store.read_aheads > 0 and 0.0 <= store.guess_recall <= 1.0
        # every routing after the first MoE layer of a step that read ahead had a guess
        assert store.guesses_routed == sum(modes) * (SPEC.n_layers - 1) * SPEC.routing.top_k
        del capped, session, store  # unmapped: its pages must not stay mapped beside the next model's
        gc.collect()


def test_no_read_ahead_when_the_budget_holds_one_layer_only(exported):
    case = exported("read_ahead", SPEC)
    span = int(Model.load(case.bundle, threads=1).experts.spans.max())
    assert not Model.load(case.bundle, threads=1, expert_budget=3 * span, read_ahead=True).weights.reading_ahead
    assert Model.load(case.bundle, threads=1, expert_budget=4 * span, read_ahead=True).weights.reading_ahead
    measured = Model.load(case.bundle, threads=1, expert_budget=4 * span).weights  # by default: while it pays
    assert measured.governor is not None and measured.may_read_ahead and not measured.reading_ahead  # trial: off first
    assert Model.load(case.bundle, threads=1, expert_budget=3 * span).weights.governor is None
    assert not Model.load(case.bundle, threads=1, expert_budget=4 * span, read_ahead=False).weights.may_read_ahead


def test_a_probe_sees_guesses_of_prompts_without_reading_ahead(exported):
    model = Model.load(exported("read_ahead", SPEC).bundle, threads=1)
    trace = RoutingTrace()
    model.session(probe=trace).prefill(TOKENS)
    assert sorted(trace.guesses) == sorted(model.weights.predictor.next.values())
    assert all(ids.shape == (len(TOKENS), SPEC.routing.top_k) for ids in trace.guesses.values())
    assert model.experts.read_aheads == 0
