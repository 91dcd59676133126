"""Write a bundle (see FORMAT.md) from a `Source`, atomically.

Dense tensors go into `dense.bin` (page-aligned), referenced by the ONNX graphs as external
data, with the LM head int8 (or float32); experts are quantized to int8 (or kept float32) and
written to `experts.bin`, each expert one page-aligned span. Everything is written into a
temporary folder beside the target and renamed into place at the end, so a failed or
interrupted export leaves nothing at the target.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from ..quant import QuantizedTensor, quant_error, quantize_int8, to_unsigned
from ..quant.int8 import resolve_group_size
from ..runtime.bundle import (
    EXPERTS_HEADER,
    EXPERTS_MAGIC,
    FORMAT_VERSION,
    GRAPH_CONTRACT_KEY,
    GRAPH_LAYER_KEY,
    MANIFEST,
    PAGE,
    ExpertsIndex,
    Manifest,
    TensorEntry,
    expert_span_layout,
    graph_contract,
    pack_expert_span,
    read_manifest,
)
from ..runtime.bundle_dir import BundleDir
from ..runtime.errors import BundleError
from ..runtime.integrity import digest, expert_seed
from ..runtime.spec import ModelSpec
from .full_graph import write_full_graph
from .onnx_graphs import layer_graph
from .source import ExportError, Source
from .tensor_names import dense_names, expert_names, is_dense_linear

DENSE_FILE = "dense.bin"
EXPERTS_FILE = "experts.bin"
DENSE_ALIGN = PAGE  # onnxruntime memory-maps external data only at page-aligned offsets; else it copies


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _nbits_block(in_features: int, group_size: int) -> int:
    """MatMulNBits block: the group size, else the largest power of two ≤ 128 dividing the input."""
    for block in (group_size,) if group_size else (128, 64, 32, 16):
        if in_features % block == 0:
            return block
    raise ExportError(f"--dense-int8 needs an input dimension divisible by 16 (got {in_features})")


def _int8_codes(weight: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dense linear as MatMulNBits wants it: uint8 codes q + 128 [out, in/b, b] and scales [out, in/b]."""
    block = _nbits_block(weight.shape[1], group_size)
    q = quantize_int8(weight, block)
    codes = to_unsigned(q.q).reshape(weight.shape[0], -1, block)
    return codes, q.scale


def _write_dense(source: Source, path: Path, group_size: int, quantize: bool, dense_int8: bool):
    """Dense tensors (float32, or int8 codes for the linears with `dense_int8`), plus the LM head
    as `head.weight` (int8 or float32) and `head.scale`.

    Returns the tensor index, the head's names and its quantization error.
    """
    spec = source.spec
    entries = {}
    head_source = "embed.weight" if spec.tie_embeddings else "lm_head.weight"

    def write(f, name: str, array: np.ndarray) -> None:
        f.write(b"\0" * (_align(f.tell(), DENSE_ALIGN) - f.tell()))
        entries[name] = TensorEntry(f.tell(), array.shape, str(array.dtype))
        f.write(np.ascontiguousarray(array).tobytes())

    with open(path, "wb") as f:
        for name in dense_names(spec):
            if name == "lm_head.weight":
                continue
            tensor = np.asarray(source.get(name), dtype=np.float32)
            if dense_int8 and is_dense_linear(name):
                codes, scale = _int8_codes(tensor, group_size)
                write(f, name, codes)
                write(f, f"{name}_scale", scale)
            else:
                write(f, name, tensor)
        weight = np.asarray(source.get(head_source), dtype=np.float32)
        try:
            head = quantize_int8(weight, group_size or None) if quantize else _unquantized(weight)
        except ValueError as exc:
            raise ExportError(f"cannot quantize the LM head: {exc}") from None
        if quantize or not spec.tie_embeddings:
            write(f, "head.weight", head.q)
        write(f, "head.scale", head.scale)
    names = {"norm": "norm.weight", "weight": "head.weight" if "head.weight" in entries else head_source,
             "scale": "head.scale"}
    return entries, names, asdict(quant_error(weight, head))


def _unquantized(weight: np.ndarray) -> QuantizedTensor:
    """Float experts in the same layout: the weights themselves, a unit scale per row."""
    return QuantizedTensor(q=weight.astype(np.float32), scale=np.ones((*weight.shape[:-1], 1), np.float32),
                           group_size=weight.shape[-1])


def _write_experts(source: Source, path: Path, group_size: int, layers: list[int], progress: tqdm,
                   quantize: bool):
    spec = source.spec
    try:
        for width in (spec.hidden_size, spec.expert_intermediate_size):
            resolve_group_size(width, group_size)
    except ValueError as exc:
        raise ExportError(f"cannot quantize experts: {exc}") from None
    layout, span = expert_span_layout(spec, group_size, "int8" if quantize else "float32")
    offsets, checksums, report = {}, {}, {}
    with open(path, "wb") as f:
        f.write(EXPERTS_HEADER.pack(EXPERTS_MAGIC, FORMAT_VERSION, PAGE).ljust(PAGE, b"\0"))
        for layer in layers:
            quantized, errors = {}, []
            for part, name in expert_names(layer).items():
                weight = source.get(name)  # [E, out, in]
                expected = layout[part].shape
                if weight.shape != (spec.routing.n_experts, *expected):
                    raise ExportError(f"{name} has shape {list(weight.shape)}, expected "
                                      f"{[spec.routing.n_experts, *expected]}")
                quantized[part] = quantize_int8(weight, group_size) if quantize else _unquantized(weight)
                errors += [quant_error(weight[e], _expert_slice(quantized[part], e))
                           for e in range(weight.shape[0])]
            offsets[layer], checksums[layer] = [], []
            for e in range(spec.routing.n_experts):
                offsets[layer].append(f.tell())
                data = pack_expert_span(layout, span, {**{p: t.q[e] for p, t in quantized.items()},
                                                       **{f"{p}_scale": t.scale[e] for p, t in quantized.items()}})
                checksums[layer].append(digest(data, seed=expert_seed(layer, e)))
                f.write(data)
            report[str(layer)] = {"max_abs": max(x.max_abs for x in errors),
                                  "rel_fro_max": max(x.rel_fro for x in errors),
                                  "cosine_min": min(x.cosine for x in errors)}
            progress.update(1)
    return ExpertsIndex(EXPERTS_FILE, span, group_size, layout, offsets, checksums), report


def _expert_slice(t: QuantizedTensor, e: int) -> QuantizedTensor:
    return QuantizedTensor(q=t.q[e], scale=t.scale[e], group_size=t.group_size)


def _write_graphs(spec: ModelSpec, root: Path, dense: dict[str, TensorEntry], contract: str,
                  progress: tqdm) -> list[str]:
    """One graph per layer, each carrying its layer index and the contract it was built for."""
    names = []
    for i in range(spec.n_layers):
        names.append(f"layer_{i:03d}.onnx")
        graph = layer_graph(spec, i, DENSE_FILE, dense.get)
        onnx.helper.set_model_props(graph, {GRAPH_LAYER_KEY: str(i), GRAPH_CONTRACT_KEY: contract})
        _save_checked(graph, root / names[-1])
        progress.update(1)
    return names


def _save_checked(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def write_bundle_files(source: Source, root: Path, group_size: int | None, show_progress: bool,
                       quantize: bool = True, with_full_graph: bool = False, dense_int8: bool = False) -> Manifest:
    """Write every file of a bundle into the (empty) folder `root`; return its manifest."""
    spec = source.spec
    moe_layers = spec.moe_layers
    if not quantize and group_size:
        raise ExportError("a group size applies to int8 experts only")
    group = group_size or 0
    with tqdm(total=spec.n_layers + len(moe_layers), desc="export", unit="layer",
              disable=not show_progress) as progress:
        dense, head, head_error = _write_dense(source, root / DENSE_FILE, group, quantize, dense_int8)
        quantization = {"scheme": "int8" if quantize else "float32", "group_size": group,
                        "dense_linears": "int8" if dense_int8 else "float32"}
        contract = graph_contract(spec, quantization, {"file": DENSE_FILE,
                                                       "tensors": {k: v.to_dict() for k, v in dense.items()}})
        graphs = _write_graphs(spec, root, dense, contract, progress)
        experts, report = (None, {})
        if moe_layers:
            experts, report = _write_experts(source, root / EXPERTS_FILE, group, moe_layers, progress, quantize)
    tokenizer = None
    if source.tokenizer_file is not None:
        tokenizer = "tokenizer.json"
        shutil.copyfile(source.tokenizer_file, root / tokenizer)
    manifest = Manifest(spec=spec, quant_scheme=quantization["scheme"], group_size=group,
                        dense_linears=quantization["dense_linears"],
                        layer_graphs=tuple(graphs), head=head, dense_file=DENSE_FILE,
                        dense_tensors=dense, experts=experts, tokenizer=tokenizer, files={},
                        generation=source.generation, quant_report={"layers": report, "head": head_error})
    if with_full_graph:
        manifest = replace(manifest, full_graph=write_full_graph(manifest, root).name)
    with BundleDir(root) as bundle:
        files = {p.name: {"size": p.stat().st_size} if p.name == EXPERTS_FILE else
                 {"size": p.stat().st_size, "xxh3": bundle.digest(p.name)} for p in sorted(root.iterdir())}
        manifest = replace(manifest, files=files)
        (root / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1))
        try:  # read back what was written, as a runtime will
            return read_manifest(bundle)
        except BundleError as exc:
            raise ExportError(f"the bundle written does not validate: {exc}") from None


def write_bundle(source: Source, out: str | Path, group_size: int | None = None, force: bool = False,
                 show_progress: bool = True, quantize: bool = True, with_full_graph: bool = False,
                 dense_int8: bool = False) -> Manifest:
    """Export `source` to the bundle folder `out`; nothing is left at `out` if this fails.

    `force` replaces an existing moedge bundle, and nothing else.
    """
    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle is an ordinary folder
        manifest = write_bundle_files(source, tmp, group_size, show_progress, quantize, with_full_graph, dense_int8)
        _fsync_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-old-", dir=out.parent))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_output(out: str | Path, force: bool) -> Path:
    """The absolute bundle path `out`, if an export may write it: absent, or (with `force`) a moedge bundle."""
    out = Path(out).absolute()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out} exists and is not a bundle folder; refusing to replace it")
    if out.exists():
        if not force:
            raise ExportError(f"{out} already exists (pass --force to replace it)")
        if not _is_bundle(out):
            raise ExportError(f"{out} is not a moedge bundle (no moedge manifest.json); --force replaces only "
                              "bundles, so it is left alone")
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {out}: {existing} is not a writable folder")
    return out


def _is_bundle(path: Path) -> bool:
    """A folder whose manifest says it is a moedge bundle (of any version: old ones may be replaced)."""
    try:
        with BundleDir(path) as bundle:
            data = json.loads(bundle.read(MANIFEST, 1 << 26))
    except (BundleError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == "moedge-bundle"


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def remove_stale_partials(out: Path) -> None:
    """Remove temporary folders that earlier exports to `out` left behind (killed before cleaning up):
    those named after a process that no longer runs."""
    prefix = _partial_prefix(out)
    for path in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    for path in root.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
