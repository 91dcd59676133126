"""GGUF import: tiny random Hugging Face models of eight families written as GGUF files (gguf's writer and
quantizers, no downloads), exported, and compared with transformers loading the same file (`gguf_file=`,
which dequantizes it with gguf) — or, for the architectures that loading does not cover (mixtral as llama
with experts, qwen2moe, olmoe, granitemoe), with the Hugging Face model holding the file's dequantized
tensors (`gguf_tiny.model_from_gguf`).

Float bundles match within FLOAT_BOUND of the logit range (measured: < 5e-7) and give transformers'
32 greedy tokens; int8 bundles decode and prefill within the same bound of the reference with
int8-round-tripped weights, as in the Hugging Face tests (against the float reference, a routing flip in
these random models moves logits by up to 0.2 of their range, whether the file is F32 or Q4_0).
"""

import copy
import shutil
from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch
from gguf_tiny import (
    CHAT_TEMPLATE,
    SAMPLE_TOKENIZER,
    TRANSFORMERS_LOADS,
    gguf_family,
    model_from_gguf,
    write_gguf_model,
)
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from helpers import greedy_tokens, run_cli
from hf_tiny import int8_round_tripped, random_model, transformers_greedy
from moedge.exporter import export
from moedge.exporter.bundle_weights import bundle_float_tensors
from moedge.exporter.gguf_writer import write_gguf
from moedge.exporter.source import open_source
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest

Q = gguf.GGMLQuantizationType
PROMPT = [5, 17, 99, 3, 120, 42, 7, 7, 130, 0, 64, 128]
FLOAT_BOUND = 1e-5
FILE_TYPES = {"mixtral": Q.Q4_0, "qwen2_moe": Q.Q8_0, "qwen3_moe": Q.F16, "olmoe": Q.Q5_1, "granitemoe": Q.Q4_1,
              "llama": Q.Q8_0, "qwen2": Q.Q5_0, "qwen3": Q.BF16}
K_QUANTS = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)


def build(family: str, seed: int = 0, **overrides):
    """A seeded random HF model of `family` as a GGUF file can hold it."""
    return random_model(*gguf_family(family, **overrides), seed)


def reference(model, path):
    """What the GGUF file computes: transformers loading it, or the HF model holding its tensors."""
    if model.config.model_type in TRANSFORMERS_LOADS:
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    return model_from_gguf(copy.deepcopy(model), path)


def logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def relative_error(got, ref):
    return float(np.abs(got - ref).max() / (ref.max() - ref.min()))


class GGUFCase:
    """One family's GGUF file, its reference model and its float and int8 bundles."""

    def __init__(self, family: str, root, qtype, k_quants=(), **overrides):
        self.model = build(family, **overrides)
        self.path = write_gguf_model(self.model, root / f"{family}.gguf", qtype, k_quants=k_quants)
        self.reference = reference(self.model, self.path)
        self.float_bundle, self.int8_bundle = root / "float.moedge", root / "int8.moedge"
        export(self.path, self.float_bundle, float_experts=True, show_progress=False)
        export(self.path, self.int8_bundle, show_progress=False)


@pytest.fixture(scope="module", params=list(FILE_TYPES))
def case(request, tmp_path_factory):
    torch.set_num_threads(1)
    return GGUFCase(request.param, tmp_path_factory.mktemp(request.param), FILE_TYPES[request.param])


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def k_case(request, tmp_path_factory):
    """Hidden 256, so every matrix takes K-quant blocks: each tensor another of Q2_K..Q6_K."""
    torch.set_num_threads(1)
    return GGUFCase(request.param, tmp_path_factory.mktemp(f"k-{request.param}"), Q.F32, k_quants=K_QUANTS,
                    hidden_size=256, intermediate_size=256, head_dim=64)


@pytest.mark.parametrize("length", [len(PROMPT), 40])
def test_float_prefill_matches_the_gguf_model(case, length):
    tokens = (PROMPT * 4)[:length]
    got = Model.load(case.float_bundle, threads=1).session().prefill(tokens)
    assert relative_error(got, logits(case.reference, tokens)) <= FLOAT_BOUND


def test_int8_bundle_matches_the_gguf_model_with_int8_weights(case):
    """As tests/test_hf_import.py: the default (int8) bundle's decode steps and prefill within FLOAT_BOUND
    of the reference whose experts, head and dense linears are int8-round-tripped."""
    assert_int8_matches(case)


def assert_int8_matches(case):
    model = Model.load(case.int8_bundle, threads=1, activations="float")  # the exact path, as there
    want = logits(int8_round_tripped(case.reference, model.manifest.dense_linears == "int8"), PROMPT)
    session = model.session()
    assert relative_error(np.stack([session.decode(t) for t in PROMPT]), want) <= FLOAT_BOUND
    assert relative_error(model.session().prefill(PROMPT), want) <= FLOAT_BOUND


def test_32_greedy_tokens_match_generate(case):
    assert greedy_tokens(case.float_bundle, PROMPT) == transformers_greedy(case.reference, PROMPT)


def test_k_quants_match_the_gguf_model(k_case):
    types = {t.tensor_type for t in gguf.GGUFReader(k_case.path).tensors}
    assert set(K_QUANTS) <= types
    got = Model.load(k_case.float_bundle, threads=1).session().prefill(PROMPT)
    assert relative_error(got, logits(k_case.reference, PROMPT)) <= FLOAT_BOUND
    assert_int8_matches(k_case)


# -- the tokenizer and generation metadata ------------------------------------------------------------


def test_tokenizer_and_chat_template_come_from_the_metadata(tmp_path):
    """The bundle's tokenizer.json (built by transformers' GGUF converter) encodes and decodes like the
    tokenizer the file was written from; bos/eos and the chat template travel into the manifest."""
    bundle = tmp_path / "b.moedge"
    export(write_gguf_model(build("llama"), tmp_path / "m.gguf", Q.F32), bundle, show_progress=False)
    ours = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    original = Tokenizer.from_file(str(SAMPLE_TOKENIZER))
    text = "def main(argv):\n    return {'x': [1, 2]}  # naïve — ok<|endoftext|>"
    assert ours.encode(text).ids == original.encode(text).ids
    assert ours.decode(original.encode(text).ids, skip_special_tokens=False) == text
    generation = read_manifest(bundle).generation
    assert generation == {"bos_token_id": 0, "eos_token_id": 0, "chat_template": CHAT_TEMPLATE,
                          "special_tokens": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}}


# -- keeping the source grid ------------------------------------------------------------------------------


def _experts(bundle):
    return {name: t for name, t in bundle_float_tensors(bundle, read_manifest(bundle)) if ".experts." in name}


@pytest.mark.parametrize(("qtype", "bits", "group", "exact"), [
    (Q.Q4_0, 4, 32, True), (Q.Q8_0, 8, 32, True), (Q.Q4_0, 4, 64, False), (Q.Q8_0, 8, None, False)])
def test_source_grid_is_kept_where_it_maps_exactly(tmp_path, qtype, bits, group, exact):
    """Q4_0 is our int4 grid at groups of 32 (d = max / -8, same nibbles), Q8_0 our int8 at groups of 32:
    re-quantizing their values gives back the same codes and scales, so the bundle's experts equal the
    file's bit for bit. Other groupings re-quantize (and differ)."""
    path = write_gguf_model(build("mixtral", intermediate_size=64), tmp_path / "m.gguf", qtype)
    export(path, tmp_path / "b.moedge", bits=bits, group_size=group, show_progress=False)
    source = open_source(path)
    for name, tensor in _experts(tmp_path / "b.moedge").items():
        assert np.array_equal(tensor, source.get(name)) == exact, name


# -- streaming ------------------------------------------------------------------------------------------------


def test_tensors_are_read_one_at_a_time(tmp_path):
    """Opening a GGUF file reads metadata only; a tensor costs about its own float32 size."""
    import tracemalloc

    model = build("mixtral", num_hidden_layers=6, hidden_size=256, intermediate_size=256, num_local_experts=8)
    path = write_gguf_model(model, tmp_path / "m.gguf", Q.Q4_0)
    total = sum(p.numel() for p in model.parameters()) * 4
    tracemalloc.start()
    source = open_source(path)
    opened = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    expert = source.get("layers.3.ffn.experts.gate")
    peak = tracemalloc.get_traced_memory()[1] - opened
    tracemalloc.stop()
    assert opened < total / 10
    assert peak < 4 * expert.nbytes < total / 4


# -- refused -----------------------------------------------------------------------------------------------------


def _refused(tmp_path, path, message):
    out = tmp_path / "never.moedge"
    result = run_cli("export", path, "-o", out)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("moedge: error:") and message in error[0], result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def _write(tmp_path, family="llama", qtype=Q.F32, **kwargs):
    return write_gguf_model(build(family), tmp_path / "m.gguf", qtype, **kwargs)


@pytest.mark.parametrize(("extra", "message"), [
    (lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR), w.add_rope_scaling_factor(4.0)),
     "RoPE scaling"),
    (lambda w: w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID), "only softmax routing"),
    (lambda w: w.add_float32("qwen2moe.attention.clamp_kqv", 8.0), "clamp_kqv=8.0 (q/k/v clipping)"),
])
def test_metadata_the_bundle_cannot_honour_is_refused(tmp_path, extra, message):
    _refused(tmp_path, _write(tmp_path, "qwen2_moe", extra=extra), message)


def test_partial_rotary_is_refused(tmp_path):
    path = _write(tmp_path, extra=lambda w: w.add_uint32("llama.rope.dimension_count", 8))
    _refused(tmp_path, path, "partial rotary")


def test_unknown_architecture_is_refused(tmp_path):
    path = _write(tmp_path)
    data = path.read_bytes().replace(b"llama", b"phi_3", 1)  # general.architecture's value
    path.write_bytes(data.replace(b"llama.", b"phi_3."))
    _refused(tmp_path, path, "GGUF architecture 'phi_3' is not supported")


def test_missing_tensor_is_refused(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"blk.1.ffn_down.weight", b"blk.1.ffn_dowX.weight"))
    _refused(tmp_path, path, "tensor blk.1.ffn_down.weight (for layers.1.ffn.down.weight) is missing")


def _tensor(name, array, qtype=None):
    return lambda writer: writer.add_tensor(name, array, raw_dtype=qtype)


def test_tensor_nothing_reads_is_refused(tmp_path):
    """llama3's rope_freqs (its RoPE scaling) would be dropped silently: refused."""
    _refused(tmp_path, _write(tmp_path, extra=_tensor("rope_freqs.weight", np.ones(8, np.float32))),
             "1 tensor(s) are not part of a supported llama model, e.g. rope_freqs.weight")


def test_unsupported_tensor_type_is_refused(tmp_path):
    path = _write(tmp_path, extra=_tensor("rope_freqs.weight", np.zeros((32, 36), np.uint8), Q.IQ4_NL))
    _refused(tmp_path, path, "tensor rope_freqs.weight is IQ4_NL, a type not supported")


def test_truncated_file_is_refused(tmp_path):
    path = _write(tmp_path, qtype=Q.Q8_0)
    path.write_bytes(path.read_bytes()[:-5000])
    _refused(tmp_path, path, "not a readable GGUF file")


def test_a_bundle_written_as_gguf_imports_back(tmp_path):
    """The llama.cpp peer's GGUF of the trained sample (F32, with its tokenizer) imports to the same bundle:
    the same tensors, logits and tokenizer."""
    first, second = tmp_path / "a.moedge", tmp_path / "b.moedge"
    export(SAMPLE_TOKENIZER.parent, first, float_experts=True, show_progress=False)
    path = write_gguf(first, read_manifest(first), tmp_path / "a.gguf", Q.F32)
    export(path, second, float_experts=True, show_progress=False)
    for (name, a), (_, b) in zip(bundle_float_tensors(first, read_manifest(first)),
                                 bundle_float_tensors(second, read_manifest(second)), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    text = "for x in range(3):\n    print(x)"
    tokens = [Tokenizer.from_file(str(b / "tokenizer.json")).encode(text).ids for b in (first, second)]
    assert tokens[0] == tokens[1]
    logits_ = [Model.load(b, threads=1).session().prefill(tokens[0]) for b in (first, second)]
    np.testing.assert_array_equal(*logits_)
    assert read_manifest(second).generation["eos_token_id"] == read_manifest(first).generation["eos_token_id"]


def test_placeholder_vocabulary_is_refused(tmp_path):
    """A peer file of a bundle without a tokenizer holds placeholder tokens, from which no tokenizer can be
    built: refused, naming it."""
    bundle = tmp_path / "a.moedge"
    export(SAMPLE_TOKENIZER.parent, bundle, float_experts=True, show_progress=False)
    path = write_gguf(bundle, replace(read_manifest(bundle), tokenizer=None), tmp_path / "a.gguf", Q.Q8_0)
    shutil.rmtree(bundle)
    _refused(tmp_path, path, "cannot build its tokenizer")
