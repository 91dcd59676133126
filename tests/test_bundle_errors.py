"""Bad bundles, bad input and failed exports give clear errors and leave no half bundle."""

import json
import shutil

import pytest

from conftest import tiny_moe_spec
from moedge.exporter import ExportError, bundle_writer, export
from moedge.runtime import BundleError, InputError, Model


@pytest.fixture
def bundle(exported, tmp_path):
    case = exported("errors", tiny_moe_spec())
    copy = tmp_path / "copy.moedge"
    shutil.copytree(case.bundle, copy)
    return copy


def edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_good_bundle_loads(bundle):
    assert Model.load(bundle).spec.n_layers == 4


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=99), "format version 99 is not supported"),
    (lambda d: d["experts"]["layers"]["1"].__setitem__(3, 10 ** 12), "expert 3 of layer 1 at offset"),
    (lambda d: d["experts"]["layers"]["1"].__setitem__(2, 4096 + 8), "page-aligned"),
    (lambda d: d["experts"]["layers"]["2"].__setitem__(0, d["experts"]["layers"]["2"][1]), "overlap"),
    (lambda d: d["experts"]["tensors"]["gate"].update(shape=[7, 7]), "experts.tensors.gate has shape"),
    (lambda d: d["dense"]["tensors"]["embed.weight"].update(offset=10 ** 9), "outside"),
    (lambda d: d["model"].update(n_heads=3), "invalid model spec"),
    (lambda d: d["graphs"].update(layers=d["graphs"]["layers"][:2]), "2 layer graphs for 4 layers"),
    (lambda d: d.pop("dense"), "missing field 'dense'"),
])
def test_inconsistent_manifest_is_rejected(bundle, change, message):
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=message):
        Model.load(bundle)


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


def test_corrupt_graph_and_checksum(bundle):
    path = bundle / "layer_001.onnx"
    path.write_bytes(b"\xff" * path.stat().st_size)
    with pytest.raises(BundleError, match="layer_001.onnx: onnxruntime cannot load"):
        Model.load(bundle)
    from moedge.runtime.bundle import read_manifest
    from moedge.runtime.integrity import verify_checksums
    with pytest.raises(BundleError, match="checksum mismatch"):
        verify_checksums(bundle, read_manifest(bundle))


@pytest.mark.parametrize("content, message", [(None, "no manifest.json"), ("{not json", "not valid JSON"),
                                              ('{"format": "other"}', "not a moedge bundle manifest")])
def test_not_a_bundle(bundle, content, message):
    if content is None:
        (bundle / "manifest.json").unlink()
    else:
        (bundle / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=message):
        Model.load(bundle)


def test_bad_input(bundle):
    model = Model.load(bundle)
    session = model.session()
    with pytest.raises(InputError, match="token id 203 is outside the vocabulary"):
        session.prefill([1, 203])
    with pytest.raises(InputError, match="token id -1"):
        session.decode(-1)
    with pytest.raises(InputError, match="no tokens"):
        session.prefill([])
    with pytest.raises(InputError, match="exceed the context length 96"):
        session.prefill(list(range(97)))
    with pytest.raises(InputError, match="exceeds the context length"):
        list(model.generate(list(range(90)), max_new_tokens=10))
    with pytest.raises(InputError, match="no tokenizer"):
        list(model.generate("text"))
    assert session.pos == 0  # nothing was consumed by the refused calls


def test_failed_export_leaves_nothing(exported, tmp_path, monkeypatch):
    case = exported("errors", tiny_moe_spec())
    out = tmp_path / "out" / "b.moedge"

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_writer, "_write_experts", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        export(case.checkpoint, out, show_progress=False)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_export_refusals(exported, tmp_path):
    case = exported("errors", tiny_moe_spec())
    with pytest.raises(ExportError, match="already exists"):
        export(case.checkpoint, case.bundle, show_progress=False)
    with pytest.raises(ExportError, match="neither"):
        export(tmp_path, tmp_path / "x.moedge", show_progress=False)
    with pytest.raises(ExportError, match="group size 48|must be one of"):
        export(case.checkpoint, tmp_path / "y.moedge", group_size=48, show_progress=False)
    assert not (tmp_path / "y.moedge").exists()


def test_graph_with_other_inputs_is_rejected(bundle):
    import onnx
    from onnx import helper

    path = bundle / "layer_002.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.input.append(helper.make_tensor_value_info("positions", onnx.TensorProto.INT64, ["T"]))
    onnx.save(model, str(path))
    edit_manifest(bundle, lambda d: d["files"]["layer_002.onnx"].update(size=path.stat().st_size))
    with pytest.raises(BundleError, match="layer_002.onnx: inputs .* re-export"):
        Model.load(bundle)
