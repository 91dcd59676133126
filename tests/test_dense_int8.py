"""int8 attention and dense-FFN matrices (the default of int8 bundles): MatMulNBits in the graphs with float
activations, the numba decode path over the same bytes with int8 activation blocks (or float ones, the exact
reference); `--float-dense` keeps them float32."""

import gc
import mmap

import numpy as np
import onnx
import pytest
import torch

from helpers import build_model, tiny_moe_spec, with_int8_activations, with_int8_linear_activations
from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.peers import torch_model_from_bundle
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest

PROMPT = [5, 17, 99, 3, 150, 42, 7, 7, 201, 0, 64, 128]
SPEC = tiny_moe_spec(layer_kinds=("dense", "moe", "moe", "moe"), routing=dict(shared_expert_size=32))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_int8")
    model = build_model(SPEC)
    ckpt = save_checkpoint(model, root / "ckpt")
    export(ckpt, root / "int8.moedge", show_progress=False)
    export(ckpt, root / "float.moedge", float_dense=True, show_progress=False)
    return root / "int8.moedge", root / "float.moedge", model


def test_linears_are_int8_matmulnbits(bundles):
    int8, _, _ = bundles
    manifest = read_manifest(int8)
    assert manifest.dense_linears == "int8"
    assert manifest.dense_tensors["layers.0.attn.wq.weight"].dtype == "uint8"
    assert manifest.dense_tensors["layers.1.ffn.router.weight"].dtype == "float32"  # routing stays float
    ops = {n.op_type for n in onnx.load(str(int8 / manifest.layer_graphs[0]), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "Gemm" not in ops
    assert read_manifest(bundles[1]).dense_linears == "float32"
    floats = read_manifest(bundles[1]).dense_tensors
    linear = [name for name in floats if ".attn.w" in name]
    assert sum(manifest.dense_tensors[n].nbytes for n in linear) * 4 == sum(floats[n].nbytes for n in linear)


def test_close_to_the_round_tripped_reference_and_consistent(bundles):
    int8, _, model = bundles
    # float expert activations throughout: this test holds the dense linears (int8 expert activations: test_parity)
    got = Model.load(int8, threads=1, activations="float").session().prefill(PROMPT)
    with torch.no_grad():  # weights as the bundle stores them; activations stay float here
        reference = torch_model_from_bundle(int8, read_manifest(int8))(torch.tensor([PROMPT]))[0].numpy()
    span = reference.max() - reference.min()
    # unpacked MatMulNBits dequantizes the weights and keeps activations float: measured 2.9e-7 (onnxruntime's
    # prepacked layout would quantize them to int8: 2.8e-3)
    assert np.abs(got - reference).max() <= 1e-5 * span
    graphs = Model.load(int8, threads=1, decode="onnx", activations="float").session()
    stepped = np.stack([graphs.decode(t) for t in PROMPT])  # rows are quantized independently
    assert np.abs(stepped - got).max() <= 1e-5 * span  # measured 1.3e-7: rounding only
    # one-token steps in numba keep activations float too: the reference itself
    numba = Model.load(int8, threads=1, activations="float").session()
    stepped = np.stack([numba.decode(t) for t in PROMPT])
    assert np.abs(stepped - reference).max() <= 1e-5 * span


def test_decode_quantizes_the_linears_activations_like_the_reference(bundles):
    """Default one-token steps (int8 activation blocks into the int8 linears, experts and head) against PyTorch
    with the same quantization: float32 rounding only (measured 1e-7 of the range; the quantization itself
    moves the logits ~4e-3, and a rounding flip across a code boundary could cost ~1e-3)."""
    int8, _, _ = bundles
    model = Model.load(int8, threads=1, kv_cache="float32")  # as PyTorch's (the float16 one: test_kv_cache_float16)
    assert model.weights.decode_layers.quantized is not None
    session = model.session()
    got = np.stack([session.decode(t) for t in PROMPT])
    with torch.no_grad():
        exact = torch_model_from_bundle(int8, read_manifest(int8))
        reference = with_int8_linear_activations(exact)(torch.tensor([PROMPT]))[0].numpy()
        unquantized = with_int8_activations(exact)(torch.tensor([PROMPT]))[0].numpy()
    span = reference.max() - reference.min()
    assert np.abs(got - reference).max() <= 1e-5 * span
    assert np.abs(got - unquantized).max() > 1e-4 * span  # the linears' activations were quantized
    float_steps = Model.load(int8, threads=1, activations="float")
    assert float_steps.weights.decode_layers.quantized is None


@pytest.mark.parametrize(("hidden", "float_experts", "float_dense", "want"), [
    (64, False, False, "int8"), (64, False, True, "float32"), (64, True, False, "float32"),
    (40, False, False, "float32")])
def test_when_dense_linears_are_int8(tmp_path, hidden, float_experts, float_dense, want):
    """int8 unless asked otherwise, unquantized, or an input dimension is not a multiple of 16."""
    spec = tiny_moe_spec(hidden_size=hidden, n_heads=2, n_kv_heads=2, head_dim=hidden // 2)
    out = tmp_path / "b.moedge"
    export(save_checkpoint(build_model(spec), tmp_path / "ckpt"), out, float_experts=float_experts,
           float_dense=float_dense, show_progress=False)
    assert read_manifest(out).dense_linears == want


def test_graphs_and_decode_path_share_one_mapping_of_the_dense_file(bundles):
    """The layer graphs take their weights from the runtime's mapping: onnxruntime neither maps the dense
    file a second time nor keeps a prepacked copy, so each dense weight is held once."""
    int8, _, _ = bundles
    runtime = Model.load(int8, threads=1)
    session = runtime.session()
    session.prefill(PROMPT)  # the graphs
    session.decode(PROMPT[0])  # the numba path
    dense = (int8 / read_manifest(int8).dense_file).resolve()
    gc.collect()  # the other tests' models
    with open("/proc/self/maps") as maps:  # areas of the file (madvise splits one mapping into several)
        areas = [line.split()[0].split("-") for line in maps if line.rstrip().endswith(str(dense))]
    pages = -(-dense.stat().st_size // mmap.PAGESIZE)
    assert sum(int(end, 16) - int(start, 16) for start, end in areas) == pages * mmap.PAGESIZE
