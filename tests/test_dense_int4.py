"""4-bit dense linears and LM head (`--bits 4 --dense-bits 4`): MatMulNBits bits 4 in the graphs, the numba
decode path over the same bytes (int4 rows of the input in `nbits_order`), an int4 head; the layout golden
against onnxruntime itself, and the combinations refused."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from helpers import build_model, tiny_dense_spec, tiny_moe_spec, with_int8_activations, with_int8_linear_activations
from moedge.cli.main import main
from moedge.exporter import ExportError, export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.peers import torch_model_from_bundle
from moedge.quant import nbits_codes, nbits_dequantize, nbits_order, pack_int4, quantize_int4, to_unsigned
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest
from moedge.runtime.storage import storage

PROMPT = [5, 17, 99, 3, 150, 42, 7, 7, 201, 0, 64, 128]
TOLERANCE = 1e-5  # of the logit range
SPECS = {"moe": tiny_moe_spec(layer_kinds=("dense", "moe", "moe", "moe"), routing=dict(shared_expert_size=32)),
         "dense": tiny_dense_spec(qk_norm="head", attention_bias=True, n_kv_heads=2)}


def test_nbits_packing_golden():
    """Byte i of a block holds input 2i (low nibble) and 2i + 1 (high nibble), each + 8; 8 bits: q + 128."""
    w = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64) ** 3
    codes, scale = nbits_codes(w, 32, 4)
    q = quantize_int4(w, 32)
    assert codes.shape == (2, 2, 16) and codes.dtype == np.uint8 and scale.shape == (2, 2)
    np.testing.assert_array_equal(scale, q.scale)
    nibbles = (q.q.astype(np.int16) + 8).astype(np.uint8).reshape(2, 2, 16, 2)
    np.testing.assert_array_equal(codes, nibbles[..., 0] | nibbles[..., 1] << 4)
    np.testing.assert_array_equal(codes.reshape(2, 32), pack_int4(nbits_order(q.q)))  # the int4 rows' view
    np.testing.assert_array_equal(nbits_order(np.arange(32))[:18], [*range(0, 32, 2), 1, 3])
    np.testing.assert_array_equal(nbits_dequantize(codes, scale, 4), q.q * np.repeat(q.scale, 32, axis=1))
    codes8, _ = nbits_codes(w, 64, 8)
    assert codes8.shape == (2, 1, 64)
    np.testing.assert_array_equal(codes8.reshape(2, 64), to_unsigned(np.rint(w / np.abs(w).max(1, keepdims=True)
                                                                              * 127)))


@pytest.mark.parametrize("block", [32, 64, 128])
def test_onnxruntime_reads_the_4_bit_codes_as_we_do(block):
    """MatMulNBits bits 4 without zero points, run by onnxruntime as the runtime runs it (no prepacking: float
    activations), computes x @ nbits_dequantize(codes)ᵀ."""
    n, k = 5, 256
    rng = np.random.default_rng(block)
    codes, scale = nbits_codes(rng.standard_normal((n, k)).astype(np.float32), block, 4)
    node = helper.make_node("MatMulNBits", ["x", "codes", "scale"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=4)
    weights = [onnx.numpy_helper.from_array(codes, "codes"), onnx.numpy_helper.from_array(scale, "scale")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", n])], weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    weights = nbits_dequantize(codes, scale, 4)
    np.testing.assert_allclose(session.run(None, {"x": np.eye(k, dtype=np.float32)})[0].T, weights, atol=1e-6)
    x = rng.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weights.T, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=list(SPECS))
def bundle(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"dense_int4_{request.param}")
    ckpt = save_checkpoint(build_model(SPECS[request.param]), root / "ckpt")
    out = root / "b.moedge"
    export(ckpt, out, bits=4, dense_bits=4, show_progress=False)
    return out


def reference(bundle) -> torch.nn.Module:
    """PyTorch with the weights as the bundle stores them (dense linears, head and experts dequantized)."""
    return torch_model_from_bundle(bundle, read_manifest(bundle))


def test_manifest_graphs_and_inspect_say_4_bits(bundle):
    manifest = read_manifest(bundle)
    spec = manifest.spec
    assert (manifest.quant_scheme, manifest.group_size, manifest.dense_linears) == ("int4", 32, "int4")
    wq = manifest.dense_tensors["layers.0.attn.wq.weight"]
    assert (wq.dtype, wq.shape) == ("uint8", (spec.n_heads * spec.head_dim, spec.hidden_size // 32, 16))
    head = manifest.dense_tensors[manifest.head["weight"]]
    assert (head.dtype, head.shape) == ("uint8", (spec.vocab_size, spec.hidden_size // 2))
    graph = onnx.load(str(bundle / manifest.layer_graphs[0]), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(helper.get_attribute_value(a) == 4 for n in nbits for a in n.attribute if a.name == "bits")
    assert "Gemm" not in {n.op_type for n in graph.node}  # layer 0 is dense in both: no float32 router
    parts = {p.name: p for p in storage(manifest)}
    assert parts["dense linears"].stored == "int4 group 32" and parts["LM head"].stored == "int4 group 32"
    assert parts["dense linears"].bits_per_weight == parts["LM head"].bits_per_weight == 4 + 32 / 32


def test_graphs_and_decode_path_match_the_stored_weights(bundle):
    """Float activations: prefill (graphs), numba steps and graph steps against PyTorch on the stored weights."""
    with torch.no_grad():
        want = reference(bundle)(torch.tensor([PROMPT]))[0].numpy()
    span = want.max() - want.min()
    got = Model.load(bundle, threads=1, activations="float").session().prefill(PROMPT)
    assert np.abs(got - want).max() <= TOLERANCE * span  # measured 2.5e-7
    for path in ("numba", "onnx"):
        session = Model.load(bundle, threads=1, decode=path, activations="float").session()
        stepped = np.stack([session.decode(t) for t in PROMPT])
        assert np.abs(stepped - want).max() <= TOLERANCE * span, path


def test_decode_quantizes_the_4_bit_linears_activations_like_the_reference(bundle):
    """Default steps: int8 activation blocks into the 4-bit linears, the int4 head (and experts) against PyTorch
    fed the same quantization; the quantization itself shows."""
    model = Model.load(bundle, threads=1, kv_cache="float32")  # as PyTorch's (float16: test_kv_cache_float16)
    assert model.weights.decode_layers.quantized is not None and model.weights.head.quantized is not None
    session = model.session()
    got = np.stack([session.decode(t) for t in PROMPT])
    with torch.no_grad():
        exact = reference(bundle)
        want = with_int8_linear_activations(exact)(torch.tensor([PROMPT]))[0].numpy()
        linears_float = with_int8_activations(exact)(torch.tensor([PROMPT]))[0].numpy()
    span = want.max() - want.min()
    assert np.abs(got - want).max() <= TOLERANCE * span
    assert np.abs(got - linears_float).max() > 1e-4 * span


def test_two_threads_split_the_4_bit_linears_exactly(bundle):
    """GEMVs split over threads compute each row as one thread does."""
    one, two = (Model.load(bundle, threads=n).session() for n in (1, 2))
    for model in (one, two):
        model.prefill(PROMPT[:4])
    for token in PROMPT[4:]:
        np.testing.assert_array_equal(one.decode(token), two.decode(token))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_int4_refusals")
    return {name: save_checkpoint(build_model(spec), root / name) for name, spec in (
        ("ok", tiny_moe_spec()),
        ("ffn96", tiny_moe_spec(layer_kinds=("dense", "moe", "moe", "moe"), expert_intermediate_size=64)))}


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("ok", dict(dense_bits=4), "--dense-bits 4 needs --bits 4"),
    ("ok", dict(bits=4, dense_bits=4, float_dense=True), "--float-dense keeps the dense linears float32"),
    ("ok", dict(dense_bits=4, float_experts=True), "--float-experts keeps every weight float32"),
    ("ok", dict(bits=4, dense_bits=5), "--dense-bits must be 4 or 8"),
    ("ok", dict(head_bits=4), "--head-bits 4 needs --bits 4"),
    ("ok", dict(bits=4, head_bits=6), "--head-bits must be 4 or 8"),
    ("ok", dict(head_bits=8, float_experts=True), "--float-experts keeps every weight float32"),
    ("ffn96", dict(bits=4, dense_bits=4, group_size=64), "layers.0.ffn.down.weight has 96")])
def test_bad_combinations_are_refused_before_writing(checkpoints, tmp_path, name, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export(checkpoints[name], tmp_path / "b.moedge", show_progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("dense_bits", "head_bits", "linears", "head"),
                         [(4, 8, "int4", "int8"), (8, 4, "int8", "int4")])
def test_head_bits_set_the_head_apart_from_the_dense_linears(checkpoints, tmp_path, dense_bits, head_bits, linears,
                                                             head):
    """`--head-bits`: the manifest, the stored head and `moedge inspect` say it; the runtime matches PyTorch on the
    stored weights with float activations and with its default int8 activation blocks."""
    out = tmp_path / "b.moedge"
    manifest = export(checkpoints["ok"], out, bits=4, dense_bits=dense_bits, head_bits=head_bits, show_progress=False)
    assert (manifest.dense_linears, manifest.head_stored) == (linears, head)
    manifest = read_manifest(out)
    stored = manifest.dense_tensors[manifest.head["weight"]]
    assert manifest.head_scheme == head and stored.dtype == {"int8": "int8", "int4": "uint8"}[head]
    assert {p.name: p.stored for p in storage(manifest)}["LM head"] == f"{head} group 32"
    with torch.no_grad():
        exact = reference(out)
        want = exact(torch.tensor([PROMPT]))[0].numpy()
        want_int8 = with_int8_linear_activations(exact)(torch.tensor([PROMPT]))[0].numpy()
    span = want.max() - want.min()
    floats = Model.load(out, threads=1, activations="float").session()
    assert np.abs(np.stack([floats.decode(t) for t in PROMPT]) - want).max() <= TOLERANCE * span
    session = Model.load(out, threads=1, kv_cache="float32").session()  # a float32 cache, as PyTorch's
    assert np.abs(np.stack([session.decode(t) for t in PROMPT]) - want_int8).max() <= TOLERANCE * span


def test_8_dense_bits_keep_int8_and_the_cli_refuses_in_one_line(checkpoints, tmp_path, capsys):
    manifest = export(checkpoints["ffn96"], tmp_path / "int8.moedge", bits=4, dense_bits=8, show_progress=False)
    assert manifest.dense_linears == "int8" and manifest.dense_tensors["head.weight"].dtype == "int8"
    assert main(["export", str(checkpoints["ffn96"]), "-o", str(tmp_path / "b.moedge"), "--bits", "4",
                 "--dense-bits", "4", "--group-size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moedge: error: ") and "\n" not in err and "divisible by the group size 64" in err
