"""The bundle contract: the manifest schema, its validation, and the experts-file header.

Both sides use these types: the exporter builds a `Manifest` and writes `to_dict()`;
the runtime reads it back with `read_manifest`, which checks versions, bounds and shapes
against the files on disk and raises `BundleError` naming the problem. Nothing here reads
an expert's bytes. FORMAT.md documents every field.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .spec import ModelSpec, SpecError

FORMAT_NAME = "moedge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAGE = 4096
EXPERTS_MAGIC = b"MOEDGEXP"
EXPERTS_HEADER = struct.Struct("<8sII")  # magic, format version, header bytes
DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
EXPERT_TENSORS = ("gate", "up", "down", "gate_scale", "up_scale", "down_scale")
WEIGHT_DTYPES = {"int8": "int8", "float32": "float32"}  # quantization scheme -> dtype of experts and head


class BundleError(Exception):
    """A bundle that is missing, corrupt, truncated, of another version, or inconsistent."""


@dataclass(frozen=True)
class TensorEntry:
    """Where a tensor's bytes are: `offset` into its file (or expert span), shape and dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ExpertsIndex:
    """Experts of every MoE layer: each is one page-aligned span of `span_bytes` in `file`."""

    file: str
    span_bytes: int
    group_size: int  # 0: one scale per output channel
    tensors: dict[str, TensorEntry]  # offsets relative to the start of a span
    layers: dict[int, tuple[int, ...]]  # layer -> absolute offset of each expert's span

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "span_bytes": self.span_bytes, "alignment": PAGE,
                "group_size": self.group_size,
                "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
                "layers": {str(k): list(v) for k, v in self.layers.items()}}


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle says about itself (see FORMAT.md)."""

    spec: ModelSpec
    quant_scheme: str  # "int8" or "float32": the experts and the LM head
    group_size: int  # 0: one scale per output channel
    dense_linears: str  # "float32", or "int8": graph linears as MatMulNBits with int8 activations
    layer_graphs: tuple[str, ...]
    head: dict[str, str]  # "norm", "weight", "scale": names of dense tensors
    dense_file: str
    dense_tensors: dict[str, TensorEntry]
    experts: ExpertsIndex | None
    tokenizer: str | None
    files: dict[str, dict[str, Any]]  # name -> {"size", "sha256"}
    generation: dict[str, Any] = field(default_factory=dict)
    quant_report: dict[str, Any] = field(default_factory=dict)
    full_graph: str | None = None  # optional whole-model graph for peer benchmarks; unused by the runtime

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model": self.spec.to_dict(),
            "quantization": {"scheme": self.quant_scheme, "group_size": self.group_size,
                             "dense_linears": self.dense_linears},
            "graphs": {"layers": list(self.layer_graphs), **({"full": self.full_graph} if self.full_graph else {})},
            "head": self.head,
            "dense": {"file": self.dense_file,
                      "tensors": {k: v.to_dict() for k, v in self.dense_tensors.items()}},
            "experts": self.experts.to_dict() if self.experts else None,
            "tokenizer": self.tokenizer, "files": self.files,
            "generation": self.generation, "quant_report": self.quant_report,
        }


def _field(data: dict, key: str, kind: type | tuple[type, ...], where: str):
    if not isinstance(data, dict) or key not in data:
        raise BundleError(f"manifest: missing field '{where}{key}'")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BundleError(f"manifest: field '{where}{key}' has the wrong type ({type(value).__name__})")
    return value


def _tensor(data: dict, where: str) -> TensorEntry:
    offset = _field(data, "offset", int, where)
    shape = tuple(_field(data, "shape", list, where))
    dtype = _field(data, "dtype", str, where)
    if dtype not in DTYPES:
        raise BundleError(f"manifest: {where}dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if offset < 0 or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise BundleError(f"manifest: {where} has a negative offset or a bad shape {list(shape)}")
    return TensorEntry(offset, shape, dtype)


def _check_file(root: Path, files: dict, name: str) -> int:
    path = root / name
    if not path.is_file():
        raise BundleError(f"bundle file missing: {path}")
    size = path.stat().st_size
    expected = files.get(name, {}).get("size")
    if expected is not None and size != expected:
        raise BundleError(f"{path} is {size} bytes, the manifest says {expected}: truncated or corrupt")
    return size


def _check_bounds(entry: TensorEntry, limit: int, what: str) -> None:
    if entry.offset + entry.nbytes > limit:
        raise BundleError(f"{what}: bytes [{entry.offset}, {entry.offset + entry.nbytes}) "
                          f"lie outside its {limit}-byte region")


def _expected_expert_shapes(spec: ModelSpec, group: int) -> dict[str, tuple[int, ...]]:
    """Shapes of an expert's tensors; `group` 0 means one scale per output channel."""
    d, i = spec.hidden_size, spec.expert_intermediate_size
    groups_d, groups_i = (d // group, i // group) if group else (1, 1)
    return {"gate": (i, d), "up": (i, d), "down": (d, i),
            "gate_scale": (i, groups_d), "up_scale": (i, groups_d), "down_scale": (d, groups_i)}


def _read_experts(root: Path, files: dict, data: dict, spec: ModelSpec, scheme: str) -> ExpertsIndex:
    where = "experts."
    name = _field(data, "file", str, where)
    size = _check_file(root, files, name)
    span = _field(data, "span_bytes", int, where)
    group = _field(data, "group_size", int, where)
    if span <= 0 or span % PAGE:
        raise BundleError(f"manifest: experts.span_bytes must be a positive multiple of {PAGE}")
    if group < 0 or group and (spec.hidden_size % group or spec.expert_intermediate_size % group):
        raise BundleError(f"manifest: experts.group_size {group} does not divide the expert dimensions")
    tensors = {k: _tensor(_field(_field(data, "tensors", dict, where), k, dict, where + "tensors."),
                          f"{where}tensors.{k}.") for k in EXPERT_TENSORS}
    weight_dtype = WEIGHT_DTYPES[scheme]
    for k in EXPERT_TENSORS:
        expected = "float32" if k.endswith("_scale") else weight_dtype
        if tensors[k].dtype != expected:
            raise BundleError(f"manifest: experts.tensors.{k} is {tensors[k].dtype}, scheme {scheme} needs {expected}")
    for k, shape in _expected_expert_shapes(spec, group).items():
        if tensors[k].shape != shape:
            raise BundleError(f"manifest: experts.tensors.{k} has shape {list(tensors[k].shape)}, "
                              f"the model spec needs {list(shape)}")
        _check_bounds(tensors[k], span, f"experts.tensors.{k}")
    layers = {}
    raw_layers = _field(data, "layers", dict, where)
    moe_layers = {i for i, kind in enumerate(spec.layer_kinds) if kind == "moe"}
    if {int(k) for k in raw_layers if k.isdigit()} != moe_layers or len(raw_layers) != len(moe_layers):
        raise BundleError(f"manifest: experts.layers names layers {sorted(raw_layers)}, "
                          f"the MoE layers are {sorted(moe_layers)}")
    for key, offsets in raw_layers.items():
        if not isinstance(offsets, list) or len(offsets) != spec.routing.n_experts:
            raise BundleError(f"manifest: experts.layers.{key} must list {spec.routing.n_experts} offsets")
        for e, off in enumerate(offsets):
            if not isinstance(off, int) or off < PAGE or off % PAGE or off + span > size:
                raise BundleError(f"experts file {name}: expert {e} of layer {key} at offset {off} "
                                  f"is not a page-aligned span inside the {size}-byte file")
        layers[int(key)] = tuple(offsets)
    starts = sorted(off for offs in layers.values() for off in offs)
    if any(b - a < span for a, b in zip(starts, starts[1:], strict=False)):
        raise BundleError(f"experts file {name}: expert spans overlap")
    return ExpertsIndex(name, span, group, tensors, layers)


def _read_head(data: dict, dense: dict[str, TensorEntry], spec: ModelSpec, scheme: str) -> dict[str, str]:
    names = {key: _field(data, key, str, "head.") for key in ("norm", "weight", "scale")}
    missing = [n for n in names.values() if n not in dense]
    if missing:
        raise BundleError(f"manifest: head tensor(s) {missing} are not in dense.tensors")
    norm, weight, scale = (dense[names[k]] for k in ("norm", "weight", "scale"))
    groups = scale.shape[1] if len(scale.shape) == 2 else 0
    if (norm.shape != (spec.hidden_size,) or weight.shape != (spec.vocab_size, spec.hidden_size)
            or scale.shape != (spec.vocab_size, groups) or not groups or spec.hidden_size % groups
            or weight.dtype != WEIGHT_DTYPES[scheme] or scale.dtype != "float32"):
        raise BundleError(f"manifest: the head tensors do not fit [vocab, hidden] {scheme} weights with "
                          "float32 scales")
    return names


def check_experts_header(head: bytes, path: Path) -> None:
    """Check the first bytes of an experts file: magic and version."""
    if len(head) < EXPERTS_HEADER.size:
        raise BundleError(f"{path}: too short to be a moedge experts file")
    magic, version, _ = EXPERTS_HEADER.unpack(head)
    if magic != EXPERTS_MAGIC:
        raise BundleError(f"{path}: not a moedge experts file (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: experts file version {version}, this runtime reads {FORMAT_VERSION}")


def read_manifest(root: str | Path) -> Manifest:
    """Read and validate `root/manifest.json` against the files beside it."""
    root = Path(root)
    try:
        data = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{root} is not a moedge bundle: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(f"{root / MANIFEST} is not a moedge bundle manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle format version {version!r} is not supported by this runtime "
                          f"(it reads version {FORMAT_VERSION}); re-export the model")
    try:
        spec = ModelSpec.from_dict(_field(data, "model", dict, "")).validate()
    except (SpecError, TypeError) as exc:
        raise BundleError(f"manifest: invalid model spec: {exc}") from None
    files = _field(data, "files", dict, "")
    graphs = _field(data, "graphs", dict, "")
    layer_graphs = tuple(_field(graphs, "layers", list, "graphs."))
    if len(layer_graphs) != spec.n_layers:
        raise BundleError(f"manifest: {len(layer_graphs)} layer graphs for {spec.n_layers} layers")
    full = graphs.get("full")
    for name in (*layer_graphs, *([full] if full else [])):
        _check_file(root, files, name)
    dense = _field(data, "dense", dict, "")
    dense_file = _field(dense, "file", str, "dense.")
    dense_size = _check_file(root, files, dense_file)
    dense_tensors = {k: _tensor(v, f"dense.tensors.{k}.")
                     for k, v in _field(dense, "tensors", dict, "dense.").items()}
    for k, entry in dense_tensors.items():
        _check_bounds(entry, dense_size, f"dense tensor {k}")
    embed = dense_tensors.get("embed.weight")
    if embed is None or embed.shape != (spec.vocab_size, spec.hidden_size):
        raise BundleError("manifest: dense.tensors.embed.weight is missing or not [vocab, hidden]")
    quant = _field(data, "quantization", dict, "")
    scheme = _field(quant, "scheme", str, "quantization.")
    if scheme not in WEIGHT_DTYPES:
        raise BundleError(f"manifest: quantization scheme {scheme!r} is not one of {sorted(WEIGHT_DTYPES)}")
    group = _field(quant, "group_size", int, "quantization.")
    dense_linears = quant.get("dense_linears", "float32")
    if dense_linears not in ("float32", "int8"):
        raise BundleError(f"manifest: quantization.dense_linears {dense_linears!r} is not float32 or int8")
    head = _read_head(_field(data, "head", dict, ""), dense_tensors, spec, scheme)
    experts = None
    if spec.is_moe:
        experts = _read_experts(root, files, _field(data, "experts", dict, ""), spec, scheme)
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        _check_file(root, files, tokenizer)
    return Manifest(spec=spec, quant_scheme=scheme, group_size=group, dense_linears=dense_linears,
                    layer_graphs=layer_graphs, head=head, dense_file=dense_file,
                    dense_tensors=dense_tensors, experts=experts, tokenizer=tokenizer, files=files,
                    generation=data.get("generation") or {}, quant_report=data.get("quant_report") or {},
                    full_graph=full)
