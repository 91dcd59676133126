"""Export never loses data: --force replaces only bundles, stale partials go, weights must be finite."""

import os
import shutil
import stat

import pytest
from safetensors.torch import load_file, save_file

from helpers import build_model, tiny_moe_spec
from moedge.exporter import ExportError, bundle_writer, export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.runtime import Model, MoedgeError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(build_model(tiny_moe_spec()), tmp_path_factory.mktemp("safety") / "ckpt")


def test_force_refuses_an_ordinary_folder_and_keeps_it(checkpoint, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(ExportError, match="is not a moedge bundle .* left alone"):
        export(checkpoint, folder, force=True, show_progress=False)
    assert (folder / "thesis.txt").read_text() == "years of work"
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ExportError, match="not a bundle folder"):
        export(checkpoint, file, force=True, show_progress=False)
    assert file.read_text() == "x"


def test_force_refuses_to_write_over_its_own_source(checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    for out in (ckpt, ckpt.parent):
        with pytest.raises(ExportError, match="would replace the checkpoint"):
            export(ckpt, out, force=True, show_progress=False)
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(p.name for p in checkpoint.iterdir())


def test_force_replaces_a_bundle(checkpoint, tmp_path):
    out = tmp_path / "b.moedge"
    export(checkpoint, out, show_progress=False)
    first = Model.load(out).manifest.group_size
    export(checkpoint, out, group_size=32, force=True, show_progress=False)
    assert (first, Model.load(out).manifest.group_size) == (0, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.moedge"]


def test_bundle_has_normal_permissions(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        export(checkpoint, tmp_path / "b.moedge", show_progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.moedge").stat().st_mode) == 0o755


def test_stale_partials_of_dead_exports_are_removed(checkpoint, tmp_path):
    out = tmp_path / "b.moedge"
    dead = tmp_path / f".b.moedge.partial-{2 ** 22 + 12345}-abc"  # above pid_max: no such process
    live = tmp_path / f".b.moedge.partial-{os.getpid()}-xyz"  # an export running now (this process)
    other = tmp_path / ".c.moedge.partial-999999-abc"  # another bundle's
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "dense.bin").write_bytes(b"x")
    export(checkpoint, out, show_progress=False)
    assert not dead.exists() and live.exists() and other.exists()


def test_failed_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out" / "b.moedge"

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_writer, "write_experts", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        export(checkpoint, out, show_progress=False)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_export_refusals(checkpoint, tmp_path):
    out = tmp_path / "b.moedge"
    export(checkpoint, out, show_progress=False)
    with pytest.raises(ExportError, match="already exists"):
        export(checkpoint, out, show_progress=False)
    with pytest.raises(ExportError, match="neither"):
        export(tmp_path / "b.moedge", tmp_path / "x.moedge", show_progress=False)
    with pytest.raises(ExportError, match="must be one of"):
        export(checkpoint, tmp_path / "y.moedge", group_size=48, show_progress=False)
    assert not (tmp_path / "y.moedge").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(checkpoint, tmp_path, bad):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    tensors = load_file(ckpt / "model.safetensors")
    name = next(n for n in tensors if "experts" in n or "attn" in n)
    tensors[name][0, 0] = bad
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(ExportError, match=f"tensor {name} holds NaN or infinite values"):
        export(ckpt, tmp_path / "b.moedge", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_float_experts_with_the_full_graph(checkpoint, tmp_path):
    """The full-graph peer also reads float32 experts (it used to assume int8)."""
    import onnxruntime as ort

    out = tmp_path / "f.moedge"
    export(checkpoint, out, float_experts=True, full_graph=True, show_progress=False)
    session = ort.InferenceSession(str(out / "full_graph.onnx"), providers=["CPUExecutionProvider"])
    assert "logits" in [o.name for o in session.get_outputs()]


def test_every_user_error_is_a_moedge_error():
    from moedge.runtime import BundleError, InputError, NumericalError, SpecError

    for cls in (BundleError, InputError, NumericalError, SpecError, ExportError):
        assert issubclass(cls, MoedgeError)



def _cached_pages(path) -> int:
    """How many of the file's pages the page cache holds (libc's mmap and mincore; Linux)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    flags = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        try:
            assert libc.mincore(ctypes.c_void_p(address), size, flags) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(ctypes.c_void_p(address), size)
    return sum(flag & 1 for flag in flags)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_an_export_leaves_its_weights_out_of_the_page_cache(checkpoint, tmp_path):
    """Written pages sit in the page cache as 4 KiB folios, which the runtime's maps would then keep; the export
    drops them once on disk, so a first run reads the weights back in the 2 MiB folios its maps ask for."""
    out = tmp_path / "bundle"
    export(checkpoint, out, show_progress=False)
    for name in ("dense.bin", "experts.bin"):
        assert os.path.getsize(out / name) > 0
        assert _cached_pages(out / name) == 0, name
    copy = tmp_path / "copy.bin"
    shutil.copyfile(out / "dense.bin", copy)  # the check itself: a file just written is cached
    assert _cached_pages(copy) > 0
