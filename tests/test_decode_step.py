"""One token through every layer in one numba call (`decode_step`): the logits and the expert store's counters of
the layer-by-layer path, bit for bit; an expert's first use still read and checked; where it is not used."""

import numpy as np
import pytest

from helpers import build_model, tiny_moe_spec
from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.runtime import BundleError, Model, decode_step, moe
from moedge.runtime.bundle import read_manifest
from moedge.runtime.forward import Probe

SPECS = {
    "moe": tiny_moe_spec(),
    "scaled": tiny_moe_spec(layer_kinds=("dense", "moe", "dense", "moe"), residual_multiplier=0.5,
                            routing=dict(top_k=3, shared_expert_size=32, scaling_factor=1.5)),
    "sigmoid": tiny_moe_spec(routing=dict(score_func="sigmoid", normalize_top_k=False, shared_expert_size=48,
                                          shared_expert_gate=True)),
}
KINDS = {  # name: (spec, export flags)
    "int8": ("moe", {}),
    "int4-dense4": ("moe", {"bits": 4, "dense_bits": 4}),
    "mixed": ("moe", {"bits": 4, "int8_fraction": 0.1}),  # 3 int8 experts of 32: some layers have none
    "float": ("moe", {"float_experts": True}),
    "float-dense": ("moe", {"float_dense": True}),
    "scaled": ("scaled", {}),
    "sigmoid": ("sigmoid", {"bits": 4}),
}
PROMPT = [5, 17, 99, 3, 150, 42, 7, 11]
TOKENS = [1, 88, 23, 160, 64, 9, 31, 120, 2, 77]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode_step")
    checkpoints = {name: save_checkpoint(build_model(spec), root / name) for name, spec in SPECS.items()}
    for kind, (spec, flags) in KINDS.items():
        export(checkpoints[spec], root / f"{kind}.moedge", show_progress=False, **flags)
    return {kind: root / f"{kind}.moedge" for kind in KINDS}


def decoded(bundle, threads: int, probe: Probe | None) -> tuple[list[np.ndarray], Model]:
    """The logits of each step of TOKENS after PROMPT, in a model of its own."""
    model = Model.load(bundle, threads=threads)
    session = model.session(probe) if probe is not None else model.session()
    session.prefill(PROMPT)
    return [session.decode(t) for t in TOKENS], model


def counters(model: Model) -> tuple:
    store = model.weights.experts
    return store.hits.tolist(), store.touched.tolist(), store.last_use.tolist(), store.clock, store.fetches


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_one_call_equals_the_layers_one_by_one(bundles, kind, threads, monkeypatch):
    """The same logits bit for bit, and the same counts of experts routed to, first uses and clock, as the path
    that calls each layer's kernels from Python (what a probe sees); at two threads with the experts spread over
    the threads."""
    monkeypatch.setattr(moe, "PARALLEL_MIN_BYTES", 0)
    one_call, fused = decoded(bundles[kind], threads, None)
    by_layer, layered = decoded(bundles[kind], threads, Probe())
    assert fused.weights.decode_step is not None
    if threads == 2:
        assert fused.weights.decode_step.parallel.any()
    for a, b in zip(one_call, by_layer, strict=True):
        np.testing.assert_array_equal(a, b)
    assert counters(fused) == counters(layered)


def test_a_mixed_bundle_whose_layers_differ_is_one_call(bundles):
    """int8 experts in some layers only: every layer still gets the mixed kernels' view (one numba type), so
    the step takes the one call (the logits: `test_one_call_equals_the_layers_one_by_one`)."""
    schemes = [set(layer) for layer in read_manifest(bundles["mixed"]).experts.schemes.values()]
    assert {"int4"} in schemes and any("int8" in layer for layer in schemes)
    assert Model.load(bundles["mixed"]).weights.decode_step is not None


def test_one_call_a_step_once_every_expert_was_used(bundles, monkeypatch):
    """An expert routed to for the first time ends the call at its layer (Python reads and checks it, then a
    second call goes on from there); once a step's experts have all been used, the step is one call."""
    calls = []
    kernel = decode_step.decode_layers
    monkeypatch.setattr(decode_step, "decode_layers", lambda *a: calls.append(a[1]) or kernel(*a))
    model = Model.load(bundles["int8"], threads=1)
    session = model.session()
    session.decode(4)
    assert calls[0] == 0 and len(calls) > 1 and calls[1:] == sorted(calls[1:])  # resumed layer by layer
    store = model.weights.experts
    store.mapped[:] = store.verified[:] = True  # as if every expert had been used
    calls.clear()
    session.decode(5)
    assert calls == [0]


def test_a_corrupt_expert_is_refused_on_its_first_use_in_a_step(bundles, tmp_path):
    """A one-token step that routes to a corrupt expert for the first time raises, and again on the next try."""
    bundle = tmp_path / "corrupt.moedge"
    bundle.mkdir()
    for f in bundles["int8"].iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(bundle)
    data = bytearray((bundle / "experts.bin").read_bytes())
    for e in range(manifest.spec.routing.n_experts):  # every expert of layer 2: the first step routes to two
        data[manifest.experts.layers[2][e] + 100] ^= 0x40
    (bundle / "experts.bin").write_bytes(bytes(data))
    session = Model.load(bundle).session()
    for _ in range(2):
        with pytest.raises(BundleError, match="of layer 2 fails its checksum"):
            session.decode(4)


def test_not_used_under_a_budget_or_with_a_probe(bundles, monkeypatch):
    calls = []
    kernel = decode_step.decode_layers
    monkeypatch.setattr(decode_step, "decode_layers", lambda *a: calls.append(a[1]) or kernel(*a))
    assert Model.load(bundles["int8"], expert_budget=10**6).weights.decode_step is None
    assert Model.load(bundles["int8"], decode="onnx").weights.decode_step is None
    Model.load(bundles["int8"]).session(Probe()).decode(4)
    assert calls == []
