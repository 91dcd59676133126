"""`moedge export --bits 4`: what the manifest says, what it costs on disk, and the combinations refused."""

import pytest

from helpers import build_model, tiny_moe_spec
from moedge.cli.main import main
from moedge.exporter import ExportError, export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.runtime.bundle import read_manifest
from moedge.runtime.storage import storage


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4")
    return {name: save_checkpoint(build_model(spec), root / name) for name, spec in (
        ("ok", tiny_moe_spec(expert_intermediate_size=64)), ("narrow", tiny_moe_spec(expert_intermediate_size=48)))}


def test_int4_bundle_is_described_and_smaller(checkpoints, tmp_path):
    int4 = export(checkpoints["ok"], tmp_path / "int4.moedge", bits=4, show_progress=False)
    int8 = export(checkpoints["ok"], tmp_path / "int8.moedge", group_size=32, show_progress=False)
    assert (int4.quant_scheme, int4.group_size, int4.dense_linears) == ("int4", 32, "int8")  # group 32 by default
    int4_layout, int8_layout = int4.experts.layouts["int4"].tensors, int8.experts.layouts["int8"].tensors
    assert int4_layout["gate"].dtype == "uint8" and int4_layout["gate"].shape == (64, 32)
    codes = sum(int4_layout[p].nbytes for p in ("gate", "up", "down"))
    assert 2 * codes == sum(int8_layout[p].nbytes for p in ("gate", "up", "down"))
    assert read_manifest(tmp_path / "int4.moedge").experts.span_bytes(1, 0) <= int8.experts.span_bytes(1, 0)
    experts, linears, head, _ = storage(int4)
    spec = int4.spec
    assert experts.weights == spec.n_layers * spec.routing.n_experts * 3 * spec.hidden_size * 64
    assert experts.nbytes == spec.n_layers * spec.routing.n_experts * int4.experts.layouts["int4"].span_bytes
    assert (linears.stored, head.stored) == ("int8", "int8 group 32") and head.bits_per_weight == 8 + 32 / 32


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("ok", dict(bits=4, float_experts=True), "--float-experts keeps every weight float32"),
    ("ok", dict(bits=4, group_size=128), "does not divide the input dimension 64"),
    ("narrow", dict(bits=4), "divisible by 32, got 48"),
    ("ok", dict(bits=3), "--bits must be 4 or 8")])
def test_bad_combinations_are_refused_before_writing(checkpoints, tmp_path, name, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export(checkpoints[name], tmp_path / "b.moedge", show_progress=False, **kwargs)
    assert not list(tmp_path.iterdir())  # no bundle, no partial folder


def test_refusal_is_one_line_through_the_cli(checkpoints, tmp_path, capsys):
    assert main(["export", str(checkpoints["narrow"]), "-o", str(tmp_path / "b.moedge"), "--bits", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moedge: error: ") and "\n" not in err and "divisible by 32" in err
