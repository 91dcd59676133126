"""Bad bundles give one clear `BundleError`: corrupt, truncated, edited, inconsistent, escaping the folder."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from fuzz_bundles import edit_manifest, read_manifest_json, run_bundle, run_model, write_manifest_json
from helpers import tiny_moe_spec
from moedge.runtime import BundleError, Model
from moedge.runtime.bundle import read_manifest
from moedge.runtime.integrity import digest
from moedge.runtime.verify import verify_bundle
from moedge.runtime.weights import Weights


@pytest.fixture
def bundle(exported, tmp_path):
    case = exported("errors", tiny_moe_spec())
    copy = tmp_path / "copy.moedge"
    shutil.copytree(case.bundle, copy)
    return copy


def test_good_bundle_loads(bundle):
    assert Model.load(bundle).spec.n_layers == 4


def _set(path, value):
    """A change that sets data[path...] = value."""
    def change(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(["format_version"], 99), "format version 99 is not supported"),
    (_set(["format_version"], "3"), "format version '3' is not supported"),
    (_set(["format_version"], 2), "format version 2 is not supported"),
    (_set(["experts", "layers", "1", 3], 4096 * 10 ** 6), "expert 3 of layer 1 at offset"),
    (_set(["experts", "layers", "1", 2], 4096 + 8), "page-aligned"),
    (lambda d: d["experts"]["layers"]["2"].__setitem__(0, d["experts"]["layers"]["2"][1]), "overlap"),
    (_set(["experts", "layouts", "int8", "tensors", "gate", "shape"], [7, 7]), "the span layout of this model"),
    (_set(["experts", "layouts", "int8", "tensors", "up", "offset"], 64), "the span layout of this model"),
    (_set(["experts", "layouts", "int8", "span_bytes"], 8192 * 8), "experts.layouts.int8.span_bytes must be"),
    (_set(["experts", "schemes", "1", 2], "int4"), "must be one of"),  # an int8 bundle holds int8 experts
    (_set(["experts", "schemes", "1"], ["int8"] * 7), "must have 8"),
    (_set(["experts", "checksums", "1", 0], "not hex"), "32 lowercase hex digits"),
    (_set(["dense", "tensors", "embed.weight", "offset"], 4096 * 10 ** 6), "outside"),
    (_set(["dense", "tensors", "embed.weight", "offset"], 4100), "not 4096-byte aligned"),
    (_set(["dense", "tensors", "norm.weight", "shape"], [2 ** 63]), "shape[i] must be in"),
    (_set(["model", "n_heads"], 3), "invalid model spec"),
    (_set(["model", "routing", "top_k"], 2.5), "routing.top_k must be an integer, got 2.5"),
    (_set(["model", "routing", "top_k"], True), "routing.top_k must be an integer, got True"),
    (_set(["model", "routing"], [1]), "model.routing must be an object"),
    (_set(["model", "logits_divisor"], 0), "logits_divisor must be in"),
    (_set(["model", "norm_eps"], 5.0), "norm_eps must be in"),
    (_set(["model", "residual_multiplier"], "1"), "residual_multiplier must be a finite number"),
    (_set(["model", "max_seq_len"], 10 ** 7), "max_seq_len must be in"),
    (_set(["model", "head_dim"], 2 ** 32), "head_dim must be in"),
    (_set(["model", "vocab_size"], 10 ** 5000 // 10 ** 4990), "vocab_size must be in"),
    (_set(["graphs", "layers"], ["layer_000.onnx", "layer_001.onnx"]), "graphs.layers must have 4 items"),
    (_set(["tokenizer"], "../tokenizer.json"), "plain file name"),
    (_set(["tokenizer"], "/etc/passwd"), "plain file name"),
    (_set(["head", "norm"], "layers.0.attn_norm.weight"), "head must name"),
    (_set(["quantization", "group_size"], 48), "quantization.group_size must be 0 or one of"),
    (_set(["quantization", "head"], "int3"), "quantization.head must be one of"),
    (_set(["quantization", "head"], "int4"), "an int4 LM head (quantization.head) needs a group size"),
    (_set(["quantization", "head"], "float32"), "a float32 LM head (quantization.head) does not go with int8"),
    (_set(["generation", "eos_token_id"], 10 ** 9), "eos_token_id must be in"),
    (_set(["quant_report", "head"], {}), "quant_report.head lacks"),
    (lambda d: d.pop("dense"), "lacks the field(s) ['dense']"),
    (lambda d: d["files"].pop("dense.bin"), "files lacks the field(s) ['dense.bin']"),
    (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
    (lambda d: d["model"].update(sliding=4), "model has unknown field(s) ['sliding']"),
])
def test_inconsistent_manifest_is_rejected(bundle, change, message):
    edit_manifest(bundle, change)  # re-sealed: validation, not the checksum, must notice
    with pytest.raises(BundleError, match=re.escape(message)):
        Model.load(bundle)


@pytest.mark.parametrize("change", [
    _set(["model", "rope_theta"], 10001.0),  # in range, but not what the graphs were built for
    _set(["model", "norm_eps"], 2e-6),
    lambda d: d["graphs"]["layers"].reverse(),  # reordered layer graphs
    _set(["dense", "tensors", "norm.weight", "offset"], 0),  # the head's norm pointed elsewhere
])
def test_manifest_that_disagrees_with_its_graphs_is_rejected(bundle, change):
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match="not exported as layer|overlap"):
        Model.load(bundle)


def test_a_default_export_leaves_the_head_scheme_to_the_dense_linears(bundle):
    """quantization.head is written only with `--head-bits` (a default bundle stays readable by runtimes from
    before the field): without it the head is int8 beside int8 linears."""
    assert "head" not in read_manifest_json(bundle)["quantization"]
    manifest = Model.load(bundle).weights.manifest
    assert manifest.head_scheme is None and manifest.head_stored == "int8"


def test_edited_manifest_fails_its_checksum(bundle):
    edit_manifest(bundle, _set(["model", "rope_theta"], 10001.0), reseal=False)
    with pytest.raises(BundleError, match="checksum mismatch, the manifest is corrupt or was edited"):
        Model.load(bundle)


def test_reordered_experts_fail_on_first_touch(bundle):
    """Swapping two experts' spans (offsets and checksums together) is caught: a checksum is seeded by its slot."""
    def swap(d):
        for key in ("layers", "checksums"):
            row = d["experts"][key]["0"]
            row[0], row[1] = row[1], row[0]
    edit_manifest(bundle, swap)
    model = Model.load(bundle)  # nothing read yet
    with pytest.raises(BundleError, match="expert [01] of layer 0 fails its checksum"):
        model.session().prefill(list(range(60)))


@pytest.mark.parametrize("name", ["dense.bin", "layer_002.onnx"])
def test_same_size_corruption_of_a_dense_file_is_caught_at_load(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}: checksum mismatch"):
        Model.load(bundle)
    with pytest.raises(BundleError, match=f"{name}: checksum mismatch"):
        verify_bundle(bundle)


@pytest.mark.parametrize("budget", [None, 10**6])  # mapped, or read into slots under a budget
def test_corrupt_expert_is_caught_on_first_touch_unless_verification_is_off(bundle, budget):
    manifest = read_manifest(bundle)
    offset = manifest.experts.layers[1][5]
    path = bundle / "experts.bin"
    good = run_bundle(bundle)
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x40
    path.write_bytes(bytes(data))
    model = Model.load(bundle, expert_budget=budget)  # lazy: no expert read at load
    session = model.session()
    with pytest.raises(BundleError, match="expert 5 of layer 1 fails its checksum"):
        session.prefill(list(range(60)))
    with pytest.raises(BundleError, match="expert 5 of layer 1 fails its checksum"):
        session.prefill(list(range(60)))  # still refused: a failed expert is checked again, never used
    with pytest.raises(BundleError, match="expert 5 of layer 1"):
        verify_bundle(bundle)
    unchecked = Model.load(bundle, verify=False, expert_budget=budget).session().prefill(list(range(60)))  # opt-out
    assert unchecked.shape == (60, 203) and good.shape[1] == 203


def test_truncated_experts_file(bundle):
    path = bundle / "experts.bin"
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(BundleError, match="truncated"):
        Model.load(bundle)


def test_bad_magic(bundle):
    path = bundle / "experts.bin"
    data = bytearray(path.read_bytes())
    data[:8] = b"GGUFXXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="not a moedge experts file"):
        Model.load(bundle)


def test_unreadable_graph_is_a_bundle_error(bundle):
    path = bundle / "layer_001.onnx"
    path.write_bytes(b"\xff" * path.stat().st_size)
    edit_manifest(bundle, lambda d: d["files"]["layer_001.onnx"].update(xxh3=digest(path.read_bytes())))
    with pytest.raises(BundleError, match="layer_001.onnx: onnxruntime cannot load"):
        Model.load(bundle)


def test_bad_tokenizer_is_a_bundle_error(bundle):
    (bundle / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    def add(d):
        d["tokenizer"] = "tokenizer.json"
        d["files"]["tokenizer.json"] = {"size": (bundle / "tokenizer.json").stat().st_size,
                                        "xxh3": digest((bundle / "tokenizer.json").read_bytes())}
    edit_manifest(bundle, add)
    with pytest.raises(BundleError, match="tokenizer.json: not a valid tokenizers file"):
        Model.load(bundle)


@pytest.mark.parametrize("replace", ["symlink", "fifo", "folder", "dev zero"])
def test_bundle_files_must_be_regular_files_inside(bundle, tmp_path, replace):
    target = bundle / "dense.bin"
    outside = tmp_path / "outside.bin"
    shutil.copyfile(target, outside)
    target.unlink()
    if replace == "symlink":
        target.symlink_to(outside)  # same bytes, but outside the bundle
    elif replace == "fifo":
        os.mkfifo(target)  # must not hang
    elif replace == "folder":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="symbolic link|not a regular file"):
        Model.load(bundle)


@pytest.mark.parametrize("content, message", [
    (None, "no manifest.json"), (b"{not json", "not valid JSON"), (b'{"format": "other"}', "not a moedge bundle"),
    (b"[" * 100000 + b"]" * 100000, "not a moedge bundle manifest|nested too deeply"),
    (b'{"format": "moedge-bundle", "format_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"format": "moedge-bundle", "format_version": NaN}', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_not_a_bundle(bundle, content, message):
    if content is None:
        (bundle / "manifest.json").unlink()
    else:
        (bundle / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError, match=message):
        Model.load(bundle)


def test_manifest_fifo_does_not_hang(bundle):
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(BundleError, match="not a regular file"):
        Model.load(bundle)


def _replace(bundle, other, tmp_path):
    """Replace the bundle at its path by a copy of `other`, as `export --force` does; return where the old one went."""
    moved = tmp_path / "moved.moedge"
    os.replace(bundle, moved)
    shutil.copytree(other, bundle)
    return moved


def test_a_load_keeps_reading_the_bundle_it_opened(bundle, exported, tmp_path):
    """Replaced between reading the manifest and mapping the files, a load still reads one bundle whole."""
    from moedge.runtime.bundle_dir import BundleDir

    old_logits = run_bundle(bundle)
    other = exported("errors-other", tiny_moe_spec(), group_size=32).bundle
    assert not np.array_equal(run_bundle(other), old_logits)
    with BundleDir(bundle) as handle:
        manifest = read_manifest(handle)
        _replace(bundle, other, tmp_path)
        model = Model(Weights(handle, manifest, threads=1), threads=1)
    np.testing.assert_array_equal(run_model(model), old_logits)


def test_a_load_whose_bundle_vanished_is_refused(bundle, exported, tmp_path):
    from moedge.runtime.bundle_dir import BundleDir

    other = exported("errors-other", tiny_moe_spec(), group_size=32).bundle
    with BundleDir(bundle) as handle:
        manifest = read_manifest(handle)
        shutil.rmtree(_replace(bundle, other, tmp_path))
        with pytest.raises(BundleError, match=re.escape("missing (or the bundle was replaced while loading")):
            Weights(handle, manifest, threads=1)


def test_graph_with_other_inputs_is_rejected(bundle):
    import onnx
    from onnx import helper

    path = bundle / "layer_002.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.input.append(helper.make_tensor_value_info("positions", onnx.TensorProto.INT64, ["T"]))
    onnx.save(model, str(path))
    edit_manifest(bundle, lambda d: d["files"]["layer_002.onnx"].update(size=path.stat().st_size,
                                                                        xxh3=digest(path.read_bytes())))
    with pytest.raises(BundleError, match="layer_002.onnx: inputs .* re-export"):
        Model.load(bundle)


def test_manifest_round_trip_is_exact(bundle):
    """What the exporter wrote re-seals to the same checksum (canonical JSON is stable)."""
    data = read_manifest_json(bundle)
    before = json.dumps(data, sort_keys=True)
    write_manifest_json(bundle, data)
    assert json.dumps(read_manifest_json(bundle), sort_keys=True) == before
