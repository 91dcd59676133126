"""A bundle written as GGUF for the llama.cpp peer: the tensors read back are the bundle's own, and
llama.cpp (when `make peers` installed it) computes the same logits from them."""

import gguf
import numpy as np
import pytest

from helpers import build_model, tiny_dense_spec, tiny_moe_spec
from moedge.exporter import ExportError, export
from moedge.exporter.bundle_weights import bundle_float_tensors
from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.gguf_names import gguf_name
from moedge.exporter.gguf_writer import gguf_architecture, write_gguf
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest
from moedge.runtime.tensor_names import template

PROMPT = [5, 17, 99, 3, 150, 42, 7, 7, 201, 0, 64, 128]
SPECS = {"llama-moe": tiny_moe_spec(), "llama-dense": tiny_dense_spec(),
         "olmoe": tiny_moe_spec(n_kv_heads=4, qk_norm="full", routing=dict(normalize_top_k=False))}


@pytest.fixture(scope="module", params=list(SPECS))
def bundle(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    out = root / "b.moedge"
    export(save_checkpoint(build_model(SPECS[request.param]), root / "ckpt"), out, show_progress=False)
    return out


def _written(bundle, qtype):
    manifest = read_manifest(bundle)
    path = write_gguf(bundle, manifest, bundle.parent / f"{qtype.name}.gguf", qtype)
    return manifest, path


def test_tensors_read_back_are_the_bundles(bundle):
    manifest, path = _written(bundle, gguf.GGMLQuantizationType.F32)
    reader = gguf.GGUFReader(path)
    arch = gguf_architecture(manifest.spec)
    assert reader.get_field("general.architecture").contents() == arch
    spec = manifest.spec
    meta = {"attention.layer_norm_rms_epsilon": spec.norm_eps, "rope.freq_base": spec.rope_theta,
            "attention.head_count": spec.n_heads, "attention.head_count_kv": spec.n_kv_heads,
            "attention.key_length": spec.head_dim, "block_count": spec.n_layers, "context_length": spec.max_seq_len}
    if spec.is_moe:
        meta.update({"expert_count": spec.routing.n_experts, "expert_used_count": spec.routing.top_k})
    for key, want in meta.items():
        assert reader.get_field(f"{arch}.{key}").contents() == pytest.approx(want), key
    stored = {t.name: t for t in reader.tensors}
    ours = dict(bundle_float_tensors(bundle, manifest))
    assert len(stored) == len(ours)
    for name, tensor in ours.items():
        key, _ = template(name)
        got = np.asarray(stored[gguf_name(name)].data).reshape(tensor.shape)
        if arch == "llama" and key.endswith(("wq.weight", "wk.weight")):  # interleaved RoPE pairs: undo
            heads = spec.n_heads if "wq" in key else spec.n_kv_heads
            got = got.reshape(heads, spec.head_dim // 2, 2, -1).swapaxes(1, 2).reshape(tensor.shape)
        np.testing.assert_array_equal(got, tensor, err_msg=name)


def test_q8_0_round_trips_within_its_step(bundle):
    manifest, path = _written(bundle, gguf.GGMLQuantizationType.Q8_0)
    reader = gguf.GGUFReader(path)
    ours = dict(bundle_float_tensors(bundle, manifest))
    down = next(t for t in reader.tensors if t.name.endswith(("ffn_down_exps.weight", "ffn_down.weight")))
    assert down.tensor_type == gguf.GGMLQuantizationType.Q8_0
    want = ours[next(n for n in ours if n.endswith(("experts.down", "ffn.down.weight")) and n.startswith("layers.0."))]
    got = gguf.quants.dequantize(down.data, down.tensor_type).reshape(want.shape)
    step = np.abs(want).reshape(*want.shape[:-1], -1, 32).max(-1, keepdims=True) / 127
    assert np.all(np.abs(got - want).reshape(step.shape[:-1] + (32,)) <= step * 0.5 + 1e-6)


@pytest.mark.parametrize(("change", "message"), [
    (dict(attention_bias=True), "attention biases"), (dict(residual_multiplier=0.5), "multipliers"),
    (dict(qk_norm="head"), "per-head q/k norm"), (dict(routing=dict(shared_expert_size=32)), "shared expert"),
    (dict(layer_kinds=("dense", "moe", "moe", "moe")), "mixed"),
    (dict(routing=dict(normalize_top_k=False)), "un-normalised top-k")])
def test_models_without_an_exact_gguf_form_are_refused(change, message):
    with pytest.raises(ExportError, match=message):
        gguf_architecture(tiny_moe_spec(**change))


def test_llama_cpp_computes_the_same_logits(bundle):
    """F32 GGUF: llama.cpp's logits within 2e-4 of the range of ours (its KV cache is float16;
    measured ≤ 9.5e-5). Skipped unless `make peers` installed llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp")
    _, path = _written(bundle, gguf.GGMLQuantizationType.F32)
    llm = llama_cpp.Llama(str(path), n_ctx=32, n_threads=1, logits_all=True, verbose=False)
    llm.eval(PROMPT)
    theirs = np.array(llm.scores[:len(PROMPT)])
    llm.close()
    session = Model.load(bundle, threads=1, activations="float").session()
    ours = np.stack([session.decode(t) for t in PROMPT])  # float activations, like llama.cpp's F32 path
    assert np.abs(theirs - ours).max() <= 2e-4 * (ours.max() - ours.min())
