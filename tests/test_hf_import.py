"""Hugging Face import: tiny random models of all nine families, exported and compared with transformers.

Float bundles (`float_experts`) match transformers' prefill logits within 1e-5 of the logit range
(measured: < 1e-6) and its 32 greedy tokens exactly. Int8 bundles (the default export) decode like
transformers with int8-round-tripped experts, head and dense linears within 1e-5 too, in decode and prefill
(with float expert activations; the default int8 ones are checked in test_parity), and match the float model
on the 12-token prompt within INT8_BOUND of the logit range (weight rounding and the experts' int8 activation
blocks; dense linears keep activations float; measured: up to 3.0e-2 on these random hidden-64 models, where
each matrix has few inputs per scale).
"""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import greedy_tokens, run_cli
from hf_tiny import FAMILIES, build_hf_model, int8_round_tripped, save_hf_model, transformers_greedy
from moedge.exporter import ExportError, export
from moedge.exporter.adapters import ADAPTERS
from moedge.exporter.adapters.adapter import moe_layer_kinds
from moedge.quant import SCHEMES, dequantize, quantize_int8
from moedge.runtime import InputError, Model

PROMPT = [5, 17, 99, 3, 120, 42, 7, 7, 130, 0, 64, 128]
FLOAT_BOUND = 1e-5  # float32 rounding only: a wrong epsilon or bias fails it
INT8_BOUND = 4e-2  # int8 weights everywhere, and int8 activation blocks into the experts
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe")
ARCHITECTURES = ["GraniteMoeForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
                 "OlmoeForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM",
                 "Qwen3MoeForCausalLM"]


class Family:
    """One family's HF model, its saved folder and its float and int8 bundles."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.hf = build_hf_model(name)
        self.folder = save_hf_model(self.hf, root / "hf")
        self.float_bundle = root / "float.moedge"
        self.int8_bundle = root / "int8.moedge"
        export(self.folder, self.float_bundle, float_experts=True, show_progress=False)
        export(self.folder, self.int8_bundle, show_progress=False)

    def logits(self, tokens):
        with torch.no_grad():
            return self.hf(torch.tensor([tokens])).logits[0].numpy()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    torch.set_num_threads(1)
    return Family(request.param, tmp_path_factory.mktemp(request.param))


def relative_error(got, ref):
    return float(np.abs(got - ref).max() / (ref.max() - ref.min()))


def test_every_family_is_registered():
    assert sorted(ADAPTERS) == ARCHITECTURES


@pytest.mark.parametrize("length", [len(PROMPT), 40])
def test_float_prefill_matches_transformers(family, length):
    tokens = (PROMPT * 4)[:length]
    got = Model.load(family.float_bundle, threads=1).session().prefill(tokens)
    assert relative_error(got, family.logits(tokens)) <= FLOAT_BOUND


def test_int8_prefill_within_bound(family):
    got = Model.load(family.int8_bundle, threads=1).session().prefill(PROMPT)
    assert relative_error(got, family.logits(PROMPT)) <= INT8_BOUND


@pytest.mark.parametrize("length", [len(PROMPT), 40])
def test_int8_decode_and_prefill_match_transformers_with_int8_weights(family, length):
    """transformers with its experts, LM head and attention/dense-FFN matrices replaced by their int8
    round trip (`hf_tiny.int8_round_tripped`). Activations stay float in both paths
    (`activations="float"`: the default quantizes the experts' to int8 blocks, checked against PyTorch
    in test_parity): one-token decode steps (numba) and prefill (MatMulNBits unpacked) match it."""
    tokens = (PROMPT * 4)[:length]
    model = Model.load(family.int8_bundle, threads=1, activations="float")
    int8_dense = model.manifest.dense_linears == "int8"  # Qwen2-MoE's shared expert (40 wide) keeps them float
    with torch.no_grad():
        ref = int8_round_tripped(family.hf, int8_dense)(torch.tensor([tokens])).logits[0].numpy()
    session = model.session()
    got = np.stack([session.decode(t) for t in tokens])
    assert relative_error(got, ref) <= FLOAT_BOUND
    assert relative_error(model.session().prefill(tokens), ref) <= FLOAT_BOUND


def test_int4_prefill_matches_transformers_with_int4_experts(family, tmp_path):
    """--bits 4 (groups of 32; dense linears float): transformers with its experts replaced by their int4
    round trip and its head by the int8 one (groups of 32). Families whose expert widths are not
    multiples of 32 are refused with a one-line reason. Float expert activations: the exact path."""
    if family.hf.config.model_type not in MOE_TYPES:
        pytest.skip("a dense model has no experts")
    out = tmp_path / "int4.moedge"
    try:
        export(family.folder, out, bits=4, float_dense=True, show_progress=False)
    except ExportError as exc:
        assert "divisible by 32" in str(exc) or "does not divide" in str(exc)
        return
    reference = copy.deepcopy(family.hf)
    with torch.no_grad():
        for name, weight in reference.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                weight.copy_(torch.from_numpy(dequantize(SCHEMES["int4"].quantize(weight.numpy(), 32))))
        head = reference.lm_head.weight.detach().numpy()
        reference.lm_head.weight = torch.nn.Parameter(torch.from_numpy(dequantize(quantize_int8(head, 32))))
        ref = reference(torch.tensor([PROMPT])).logits[0].numpy()
    got = Model.load(out, threads=1, activations="float").session().prefill(PROMPT)
    assert relative_error(got, ref) <= FLOAT_BOUND


def test_32_greedy_tokens_match_generate(family):
    assert greedy_tokens(family.float_bundle, PROMPT) == transformers_greedy(family.hf, PROMPT)


def test_generate_stops_at_eos_like_transformers(family):
    config = json.loads((family.folder / "config.json").read_text())
    model = Model.load(family.float_bundle, threads=1)
    assert model.manifest.generation == {"bos_token_id": config["bos_token_id"],
                                         "eos_token_id": config["eos_token_id"]}
    family.hf.generation_config.eos_token_id = config["eos_token_id"]
    with torch.no_grad():
        want = family.hf.generate(torch.tensor([PROMPT]), max_new_tokens=32, do_sample=False)[0, len(PROMPT):]
    want = want.tolist()
    if config["eos_token_id"] in want:
        want = want[:want.index(config["eos_token_id"])]
    assert [t.id for t in model.generate(PROMPT, max_new_tokens=32)] == want


# -- checkpoint layouts -------------------------------------------------------------------------------


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(src / name, dst / name)
    return dst


def _bundle_bytes(bundle: Path) -> dict[str, bytes]:
    return {name: (bundle / name).read_bytes() for name in ("dense.bin", "experts.bin")}


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "granitemoe"])
def test_fused_and_sharded_layouts_give_the_same_bundle(name, tmp_path):
    """transformers 5's in-memory names (stacked gate_up_proj) and a sharded save export identically."""
    torch.set_num_threads(1)
    model = build_hf_model(name)
    per_expert = save_hf_model(model, tmp_path / "per_expert")
    fused = _copy_config(per_expert, tmp_path / "fused")
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"
               or not model.config.tie_word_embeddings}, str(fused / "model.safetensors"))
    sharded = save_hf_model(model, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    bundles = []
    for src in (per_expert, fused, sharded):
        export(src, tmp_path / f"{src.name}.moedge", float_experts=True, show_progress=False)
        bundles.append(_bundle_bytes(tmp_path / f"{src.name}.moedge"))
    assert bundles[0] == bundles[1] == bundles[2]


def test_bfloat16_checkpoint(tmp_path):
    """bf16 weights are widened to float32; the reference is the bf16 checkpoint loaded in float32."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    folder = save_hf_model(build_hf_model("qwen2_moe").to(torch.bfloat16), tmp_path / "hf")
    export(folder, tmp_path / "b.moedge", float_experts=True, show_progress=False)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        ref = reference(torch.tensor([PROMPT])).logits[0].numpy()
    got = Model.load(tmp_path / "b.moedge", threads=1).session().prefill(PROMPT)
    assert relative_error(got, ref) <= FLOAT_BOUND


# -- config conventions and refusals ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_hf_model(build_hf_model("llama"), tmp_path_factory.mktemp("llama") / "hf")


def _with_config(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    config = {**json.loads((src / "config.json").read_text()), **changes}
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


@pytest.mark.parametrize("changes, message", [
    (dict(architectures=["FooForCausalLM"]), "supported: " + ", ".join(ARCHITECTURES)),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "RoPE type 'linear'"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}), "RoPE type 'dynamic'"),
    (dict(partial_rotary_factor=0.5), "partial rotary"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(mlp_bias=True), "mlp_bias=True"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(num_key_value_heads=3), "n_heads (4) must be a multiple of n_kv_heads (3)"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config="),
])
def test_unsupported_config_is_refused(llama_folder, tmp_path, changes, message):
    with pytest.raises(ExportError) as info:
        export(_with_config(llama_folder, tmp_path / "src", **changes), tmp_path / "out", show_progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_olmoe_clip_qkv_is_refused(tmp_path):
    folder = save_hf_model(build_hf_model("olmoe"), tmp_path / "hf")
    with pytest.raises(ExportError, match="clip_qkv=8.0 is not supported"):
        export(_with_config(folder, tmp_path / "src", clip_qkv=8.0), tmp_path / "out", show_progress=False)


def test_a_tensor_nobody_reads_is_refused(llama_folder, tmp_path):
    """An o_proj bias the config does not announce would be dropped silently: refuse it."""
    src = _copy_config(llama_folder, tmp_path / "src")
    from safetensors.torch import load_file

    state = load_file(str(llama_folder / "model.safetensors"))
    state["model.layers.0.self_attn.o_proj.bias"] = torch.ones(48)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ExportError, match="o_proj.bias"):
        export(src, tmp_path / "out", show_progress=False)


def test_pickle_checkpoints_are_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (src / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ExportError):
        export(src, tmp_path / "out", show_progress=False)


def test_sliding_window_caps_the_context(family):
    spec = Model.load(family.float_bundle, threads=1).spec
    assert spec.max_seq_len == (64 if family.name == "mistral" else 128)
    if family.name == "mistral":  # exact within the window, refused beyond it
        with pytest.raises(InputError, match="context length 64"):
            list(Model.load(family.float_bundle, threads=1).generate(PROMPT, max_new_tokens=60))


def test_qwen_moe_layer_placement_follows_transformers():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(vocab_size=67, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                            num_key_value_heads=2, num_experts=2, moe_intermediate_size=8, intermediate_size=8,
                            shared_expert_intermediate_size=8, decoder_sparse_step=2, mlp_only_layers=[3])
    model = Qwen2MoeForCausalLM(config)
    want = tuple("moe" if "Sparse" in type(layer.mlp).__name__ else "dense" for layer in model.model.layers)
    assert moe_layer_kinds(6, 2, (3,)) == want == ("dense", "moe", "dense", "dense", "dense", "moe")


def test_cli_names_the_supported_architectures(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["FooForCausalLM"]}))
    result = run_cli("export", src, "-o", tmp_path / "o")
    assert result.returncode == 2
    assert "'FooForCausalLM' is not supported; supported: " + ", ".join(ARCHITECTURES) in result.stderr


# -- tokenizer, generation defaults and chat template -------------------------------------------------

def test_chat_template_renders_like_transformers(chat_bundle):
    from moedge.runtime.chat import chat_prompt

    bundle, tokenizer = chat_bundle
    messages = [{"role": "system", "content": "you are a cat"}, {"role": "user", "content": "hello how are you"}]
    want = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if not isinstance(want, list) else want
    model = Model.load(bundle, threads=1)
    assert model.manifest.generation["special_tokens"] == {"bos_token": "<s>", "eos_token": "</s>",
                                                           "unk_token": "<unk>"}
    assert (bundle / "tokenizer.json").is_file()
    assert chat_prompt(model, messages) == list(want)


def test_run_chat_from_the_cli(chat_bundle, capsys):
    """`run --chat` generates from the templated user message: the same tokens as the API, not the raw prompt's."""
    from moedge.cli.main import main
    from moedge.runtime.chat import chat_prompt

    bundle = chat_bundle[0]
    model = Model.load(bundle, threads=1)
    templated = "".join(t.text for t in model.generate(chat_prompt(model, [{"role": "user", "content": "hello world"}]),
                                                       max_new_tokens=8))
    raw = "".join(t.text for t in model.generate("hello world", max_new_tokens=8))
    assert templated != raw
    assert main(["run", str(bundle), "--prompt", "hello world", "--chat", "-n", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out == templated + "\n"  # the generated text alone


def test_chat_without_a_template_is_an_input_error(family):
    from moedge.runtime.chat import chat_prompt

    with pytest.raises(InputError, match="no chat template"):
        chat_prompt(Model.load(family.float_bundle, threads=1), [{"role": "user", "content": "hi"}])
