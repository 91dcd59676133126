"""The Python API: bad arguments raise `InputError` naming them; threads share a model safely; numerics."""

import threading

import numpy as np
import pytest

from helpers import tiny_moe_spec
from moedge.runtime import InputError, Model, NumericalError, session


@pytest.fixture(scope="module")
def model(exported):
    return Model.load(exported("api", tiny_moe_spec()).bundle, threads=1)


@pytest.mark.parametrize("tokens, message", [
    ([1, 2 ** 63], "token id 9223372036854775808 is outside the vocabulary"),
    ([1, 203], "token id 203 is outside"), ([-1], "token id -1"),
    ([1.0, 2.0], "token ids must be integers, got float"), ([float("nan")], "got float nan"),
    (["1"], "got str"), ([None], "got NoneType"), ([[1, 2], [3]], "got list"), ([True], "got bool"),
    (b"\x01\x02", "must be a list of integers, got bytes"), ("12", "got str"), (None, "got NoneType"),
    (np.array([[1, 2]]), "1-D integer array, got 2-D"), (np.array([1.5]), "got 1-D float64"),
    ([], "no tokens given"),
])
def test_bad_token_ids(model, tokens, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        model.session().prefill(tokens)


def test_a_prompt_that_fails_in_a_later_pass_leaves_the_sequence_as_it_was(model, monkeypatch):
    monkeypatch.setattr(session, "PREFILL_CHUNK", 4)
    s = model.session()
    s.prefill([1, 2, 3])
    want = model.session()
    want.prefill([1, 2, 3])
    calls = []
    real = session.forward

    def fails_second(*args):
        calls.append(len(args[3]))
        if len(calls) == 2:
            raise NumericalError("the logits are not finite")
        return real(*args)

    monkeypatch.setattr(session, "forward", fails_second)
    with pytest.raises(NumericalError):
        s.prefill(list(range(10, 20)))
    assert calls == [4, 4] and s.pos == 3
    monkeypatch.setattr(session, "forward", real)
    np.testing.assert_array_equal(s.prefill([7, 8]), want.prefill([7, 8]))


def test_bad_decode_and_context(model):
    session = model.session()
    with pytest.raises(InputError, match="token id -1"):
        session.decode(-1)
    with pytest.raises(InputError, match="exceed the context length 96"):
        session.prefill(list(range(97)))
    with pytest.raises(InputError, match="exceeds the context length"):
        list(model.generate(list(range(90)), max_new_tokens=10))
    with pytest.raises(InputError, match="no tokenizer"):
        list(model.generate("text"))
    assert session.pos == 0  # nothing was consumed by the refused calls


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": -1}, "max_new_tokens must be a whole number"),
    ({"seed": "x"}, "seed must be a whole number"), ({"top_k": -1}, "top_k must be"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"top_p": 0}, r"top_p must be a number in \(0, 1\]"), ({"top_p": float("nan")}, "top_p must be"),
    ({"stop": "x"}, "stop must be a list"), ({"prompt": None}, "prompt must be text or a list of token ids"),
    ({"prompt": [1.5]}, "token ids must be integers"),
])
def test_bad_generate_arguments(model, kwargs, message):
    args = {"prompt": [1, 2, 3], **kwargs}
    with pytest.raises(InputError, match=message):
        list(model.generate(args.pop("prompt"), **args))


@pytest.mark.parametrize("kwargs, message", [
    ({"threads": -1}, "threads must be an integer"), ({"threads": "2"}, "threads must be an integer"),
    ({"threads": 2.5}, "threads must be an integer"), ({"threads": True}, "threads must be an integer"),
    ({"expert_budget": -5}, "expert_budget must be"), ({"verify": "yes"}, "verify must be True or False"),
    ({"read_ahead": "yes"}, "read_ahead must be True, False or 'auto'"), ({"read_ahead": 1}, "read_ahead must be"),
])
def test_bad_load_arguments(exported, kwargs, message):
    with pytest.raises(InputError, match=message):
        Model.load(exported("api", tiny_moe_spec()).bundle, **kwargs)
    with pytest.raises(InputError, match="bundle path must be a string"):
        Model.load(None)


@pytest.mark.parametrize(("threads", "budget"), [(1, None), (2, None), (1, 3)])
def test_sessions_of_one_model_decode_in_parallel_bit_for_bit(exported, threads, budget):
    """Four threads, a session each, on one shared model: the same logits as one session after another; also
    under an expert budget (of `budget` experts), whose slots the sessions share."""
    bundle = exported("api", tiny_moe_spec()).bundle
    span = int(Model.load(bundle).experts.spans.max())
    model = Model.load(bundle, threads=threads, expert_budget=budget and budget * span)
    rng = np.random.default_rng(0)
    # 80-token prompts: ~20 tokens per expert, so prefill takes the dequantize + BLAS path (which releases the GIL)
    prompts = [[rng.integers(0, 203, 80).tolist() for _ in range(3)] for _ in range(4)]
    steps = [rng.integers(0, 203, 12).tolist() for _ in range(4)]

    def run(i: int, barrier=None) -> list[np.ndarray]:
        session = model.session()
        if barrier is not None:
            barrier.wait()
        out = []
        for prompt in prompts[i]:
            session.reset()
            out.append(session.prefill(prompt))
        return out + [session.decode(t) for t in steps[i]]

    serial = [run(i) for i in range(4)]
    results: dict[int, list[np.ndarray]] = {}
    barrier = threading.Barrier(4)
    workers = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(i, barrier))) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(4):
        for got, want in zip(results[i], serial[i], strict=True):
            np.testing.assert_array_equal(got, want)


def test_overflowing_activations_are_a_numerical_error(exported, tmp_path):
    """Finite weights that overflow float32 in the forward pass end in `NumericalError`, not garbage."""
    import torch

    from helpers import build_model
    from moedge.exporter import export
    from moedge.exporter.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = build_model(tiny_moe_spec())
    with torch.no_grad():
        net.lm_head.weight.fill_(3e38)  # finite, but logits overflow float32
    export(save_checkpoint(net, tmp_path / "ckpt"), tmp_path / "b.moedge", show_progress=False)
    session = Model.load(tmp_path / "b.moedge", threads=1).session()
    with pytest.raises(NumericalError, match="not finite: the activations overflowed"):
        session.prefill([1, 2, 3])
    assert session.pos == 0


def test_blas_threads_follow_the_model(exported):
    from threadpoolctl import threadpool_info

    for threads in (1, 2):
        Model.load(exported("api", tiny_moe_spec()).bundle, threads=threads)
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and set(blas) == {threads}


def test_default_threads_follow_the_model_size(exported, monkeypatch):
    """A tiny model decodes on one thread unless asked (fork/joins cost more than its work); a big one gets
    every CPU; a layer's experts are split over threads only when they are big enough."""
    import os

    from moedge.runtime import kernels
    from moedge.runtime import model as model_module
    from moedge.runtime import moe as moe_module

    bundle = exported("api", tiny_moe_spec()).bundle
    assert Model.load(bundle).threads == 1
    assert Model.load(bundle, threads=2).threads == 2
    assert Model.load(bundle, threads=2).weights.moe[0].decode_kernel is kernels.moe_decode
    monkeypatch.setattr(model_module, "SMALL_STEP_BYTES", 0)
    monkeypatch.setattr(moe_module, "PARALLEL_MIN_BYTES", 0)
    big = Model.load(bundle)
    assert big.threads == (os.cpu_count() or 1)
    assert big.weights.moe[0].decode_kernel is (kernels.moe_decode_parallel if big.threads > 1 else kernels.moe_decode)


@pytest.mark.parametrize("name, spec", [
    ("api", tiny_moe_spec()),
    ("api-dense-shared", tiny_moe_spec(layer_kinds=("dense", "moe", "moe", "dense"),
                                       routing={"shared_expert_size": 32, "shared_expert_gate": True})),
], ids=["moe", "dense-and-shared-expert"])
def test_parallel_dense_gemvs_equal_one_thread_bit_for_bit(exported, name, spec):
    """The decode path's GEMVs split over two threads (forced down to every matrix here; q, k and v in one
    fork/join, gate and up in another) give the very numbers of one thread: each row is computed the same
    way, only on another core."""
    bundle = exported(name, spec).bundle
    one, two = Model.load(bundle, threads=1), Model.load(bundle, threads=2)
    layers = two.weights.decode_layers
    assert all(c.parallel_min > 1 << 16 for c in layers.configs)  # tiny matrices stay on one thread
    layers.configs = [c._replace(parallel_min=1) for c in layers.configs]
    a, b = one.session(), two.session()
    for t in [5, 17, 99, 3, 150, 42, 7]:
        np.testing.assert_array_equal(a.decode(t), b.decode(t))
