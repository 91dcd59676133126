"""The benchmark peers compute the same model: full ONNX graph and PyTorch-from-bundle vs the runtime (with float
expert activations, as the peers compute them; the default int8 ones are checked in test_parity)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers import tiny_moe_spec
from moedge.exporter import export
from moedge.exporter.peers import torch_model_from_bundle
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest
from moedge.runtime.rope import rope_rotation

PROMPT = [5, 17, 99, 3, 150, 42, 7]


@pytest.fixture(scope="module")
def bundle(exported, tmp_path_factory):
    spec = tiny_moe_spec(layer_kinds=("moe", "dense", "moe", "moe"),
                         routing=dict(top_k=3, shared_expert_size=32, shared_expert_gate=True))
    case = exported("peers", spec, 32)
    out = tmp_path_factory.mktemp("peers") / "full.moedge"
    export(case.checkpoint, out, group_size=32, full_graph=True, show_progress=False)
    return out


def test_full_graph_matches_runtime(bundle):
    manifest = read_manifest(bundle)
    ours = Model.load(bundle, activations="float").session().prefill(PROMPT)
    options = ort.SessionOptions()  # unpacked MatMulNBits, as the runtime runs it: float activations
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(bundle / manifest.full_graph), options, providers=["CPUExecutionProvider"])
    spec = manifest.spec
    empty = np.zeros((0, spec.n_kv_heads, spec.head_dim), np.float32)
    feeds = {"tokens": np.array(PROMPT), "rope": rope_rotation(spec, 0, len(PROMPT))}
    feeds.update({f"past_{kv}_{i}": empty for i in range(spec.n_layers) for kv in "kv"})
    logits, *present = session.run(None, feeds)
    assert np.abs(logits - ours).max() <= 1e-4 * (ours.max() - ours.min())
    assert present[0].shape == (len(PROMPT), spec.n_kv_heads, spec.head_dim)


def test_torch_from_bundle_matches_runtime(bundle):
    """Decode steps and prefill: activations float in both, like PyTorch's."""
    manifest = read_manifest(bundle)
    model = Model.load(bundle, activations="float")
    session = model.session()
    ours = np.stack([session.decode(t) for t in PROMPT])
    with torch.no_grad():
        theirs = torch_model_from_bundle(bundle, manifest)(torch.tensor([PROMPT]))[0].numpy()
    assert np.abs(theirs - ours).max() <= 1e-4 * (ours.max() - ours.min())
    assert np.abs(theirs - model.session().prefill(PROMPT)).max() <= 1e-4 * (ours.max() - ours.min())
