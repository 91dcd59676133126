"""The bundle contract: the manifest schema, its validation, the expert span layout and the graph contract.

Both sides use these types: the exporter builds a `Manifest` and writes `to_dict()`;
the runtime reads it back with `read_manifest`, which checks the manifest's own checksum, the
type and bounds of every field, every rule of FORMAT.md and the files on disk, and raises
`BundleError` naming the problem. Nothing here reads an expert's bytes. FORMAT.md documents
every field.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..quant import GROUP_SIZES, SCHEMES
from . import checks
from .bundle_dir import BundleDir
from .errors import BundleError
from .integrity import CHECKSUM_FIELD, canonical_json, digest, manifest_checksum
from .spec import ModelSpec, RoutingSpec, SpecError

FORMAT_NAME = "moedge-bundle"
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 64 << 20  # bytes
PAGE = 4096
TENSOR_ALIGN = 64  # of each tensor inside an expert span
MAX_OFFSET = 1 << 48
EXPERTS_MAGIC = b"MOEDGEXP"
EXPERTS_HEADER = struct.Struct("<8sII")  # magic, format version, header bytes
DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
EXPERT_TENSORS = ("gate", "up", "down", "gate_scale", "up_scale", "down_scale")
SCHEME_NAMES = ("int8", "int4", "mixed", "float32")  # quantization.scheme: how the experts are stored
MIXED_SCHEMES = ("int4", "int8")  # what a "mixed" bundle's experts may each be
DENSE_LINEARS = ("float32", "int8", "int4")
HEAD_SCHEMES = ("float32", "int8", "int4")  # quantization.head
NBITS = {"int8": 8, "int4": 4}  # quantization.dense_linears -> MatMulNBits bits (float32: Gemm)
HEAD_NORM, HEAD_WEIGHT, HEAD_SCALE, EMBEDDING = "norm.weight", "head.weight", "head.scale", "embed.weight"
GRAPH_LAYER_KEY, GRAPH_CONTRACT_KEY = "moedge.layer", "moedge.contract"  # ONNX metadata of each layer graph
_FIELDS = ("format", "format_version", CHECKSUM_FIELD, "model", "quantization", "graphs", "head", "dense",
           "experts", "tokenizer", "files", "generation", "quant_report")
_GENERATION = ("bos_token_id", "eos_token_id", "chat_template", "special_tokens")
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class TensorEntry:
    """Where a tensor's bytes are: `offset` into its file (or expert span), shape and dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ExpertLayout:
    """Where an expert's tensors sit inside its span, for one scheme, and the span's size."""

    span_bytes: int
    tensors: dict[str, TensorEntry]  # offsets relative to the start of a span

    def to_dict(self) -> dict[str, Any]:
        return {"span_bytes": self.span_bytes, "tensors": {k: v.to_dict() for k, v in self.tensors.items()}}


@dataclass(frozen=True)
class ExpertsIndex:
    """Experts of every MoE layer: each is one page-aligned span in `file`, laid out as its scheme says."""

    file: str
    group_size: int  # 0: one scale per output channel
    layouts: dict[str, ExpertLayout]  # scheme -> layout, for the schemes the experts use
    schemes: dict[int, tuple[str, ...]]  # layer -> scheme of each expert
    layers: dict[int, tuple[int, ...]]  # layer -> absolute offset of each expert's span
    checksums: dict[int, tuple[str, ...]]  # layer -> checksum of each expert's span (seeded by its slot)

    def span_bytes(self, layer: int, expert: int) -> int:
        """The size of one expert's span."""
        return self.layouts[self.schemes[layer][expert]].span_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "alignment": PAGE, "group_size": self.group_size,
                "layouts": {k: v.to_dict() for k, v in self.layouts.items()},
                "schemes": {str(k): list(v) for k, v in self.schemes.items()},
                "layers": {str(k): list(v) for k, v in self.layers.items()},
                "checksums": {str(k): list(v) for k, v in self.checksums.items()}}


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle says about itself (see FORMAT.md)."""

    spec: ModelSpec
    quant_scheme: str  # the experts' scheme: "int8", "int4", "float32" or "mixed" (int4 or int8 per expert)
    group_size: int  # 0: one scale per output channel
    dense_linears: str  # "float32", or "int8": graph linears as MatMulNBits over uint8 codes
    layer_graphs: tuple[str, ...]
    head: dict[str, str]  # "norm", "weight", "scale": names of dense tensors
    dense_file: str
    dense_tensors: dict[str, TensorEntry]
    experts: ExpertsIndex | None
    tokenizer: str | None
    files: dict[str, dict[str, Any]]  # name -> {"size", "xxh3"} ({"size"} for the experts file)
    generation: dict[str, Any] = field(default_factory=dict)
    quant_report: dict[str, Any] = field(default_factory=dict)
    full_graph: str | None = None  # optional whole-model graph for peer benchmarks; unused by the runtime
    head_scheme: str | None = None  # quantization.head: the LM head's scheme; None: `default_head_scheme`'s

    @property
    def head_stored(self) -> str:
        """The LM head's scheme (quant.SCHEMES): "int8", "int4" or "float32"."""
        return self.head_scheme or default_head_scheme(self.quant_scheme, self.dense_linears)

    def quantization_dict(self) -> dict[str, Any]:
        head = {"head": self.head_scheme} if self.head_scheme else {}
        return {"scheme": self.quant_scheme, "group_size": self.group_size, "dense_linears": self.dense_linears, **head}

    def dense_dict(self) -> dict[str, Any]:
        return {"file": self.dense_file, "tensors": {k: v.to_dict() for k, v in self.dense_tensors.items()}}

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON data, with its own checksum."""
        data = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model": self.spec.to_dict(), "quantization": self.quantization_dict(),
            "graphs": {"layers": list(self.layer_graphs), **({"full": self.full_graph} if self.full_graph else {})},
            "head": self.head, "dense": self.dense_dict(),
            "experts": self.experts.to_dict() if self.experts else None,
            "tokenizer": self.tokenizer, "files": self.files,
            "generation": self.generation, "quant_report": self.quant_report,
        }
        return {**data, CHECKSUM_FIELD: manifest_checksum(data)}


def graph_contract(spec: ModelSpec, quantization: dict[str, Any], dense: dict[str, Any]) -> str:
    """The checksum each layer graph carries of what it was built for: the spec, the quantization and
    the dense-weights index (its external data). A manifest edited after export no longer matches."""
    return digest(canonical_json({"model": spec.to_dict(), "quantization": quantization, "dense": dense}))


def expert_span_layout(spec: ModelSpec, group_size: int, scheme: str) -> tuple[dict[str, TensorEntry], int]:
    """The one layout of an expert's span (FORMAT.md): gate, up, down codes as `scheme` stores them
    (quant.SCHEMES), then their float32 scales, each 64-byte aligned; and the span's size, rounded up
    to a page."""
    d, i = spec.hidden_size, spec.expert_intermediate_size
    stored = SCHEMES[scheme]
    for width in (d, i):
        stored.check_group(width, group_size)
    groups_d, groups_i = (d // group_size, i // group_size) if group_size else (1, 1)
    shapes = {"gate": stored.stored_shape(i, d), "up": stored.stored_shape(i, d), "down": stored.stored_shape(d, i),
              "gate_scale": (i, groups_d), "up_scale": (i, groups_d), "down_scale": (d, groups_i)}
    layout, cursor = {}, 0
    for name in EXPERT_TENSORS:
        cursor = _align(cursor, TENSOR_ALIGN)
        layout[name] = TensorEntry(cursor, shapes[name], "float32" if name.endswith("_scale") else stored.code_dtype)
        cursor = layout[name].end
    return layout, _align(cursor, PAGE)


def pack_expert_span(layout: dict[str, TensorEntry], span_bytes: int, tensors: dict[str, np.ndarray]) -> bytes:
    """One expert's span: each tensor of `EXPERT_TENSORS` at its `layout` entry, zeros elsewhere."""
    span = bytearray(span_bytes)
    for name, entry in layout.items():
        data = np.ascontiguousarray(tensors[name], dtype=DTYPES[entry.dtype])
        if data.shape != entry.shape:
            raise ValueError(f"expert tensor {name} has shape {list(data.shape)}, the layout says {list(entry.shape)}")
        span[entry.offset:entry.end] = data.tobytes()
    return bytes(span)


def default_head_scheme(scheme: str, dense_linears: str) -> str:
    """The LM head's scheme (quant.SCHEMES) when the manifest does not say (quantization.head, written since
    `--head-bits`): int4 beside 4-bit dense linears, float32 in float32 bundles, else int8."""
    return "int4" if dense_linears == "int4" else "float32" if scheme == "float32" else "int8"


def head_groups(spec: ModelSpec, group_size: int) -> int:
    """Scale groups per row of the LM head: one per channel (0), or hidden / group size."""
    return spec.hidden_size // group_size if group_size else 1


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _tensor(data: Any, where: str) -> TensorEntry:
    data = checks.record(data, where, ("offset", "shape", "dtype"), (), BundleError)
    offset = checks.integer(data["offset"], f"{where}.offset", 0, MAX_OFFSET, BundleError)
    shape = checks.array(data["shape"], f"{where}.shape", None, BundleError, limit=4)
    if not shape:
        raise BundleError(f"manifest: {where}.shape is empty")
    dims = tuple(checks.integer(n, f"{where}.shape[i]", 1, 1 << 31, BundleError) for n in shape)
    dtype = checks.choice(data["dtype"], f"{where}.dtype", tuple(DTYPES), BundleError)
    entry = TensorEntry(offset, dims, dtype)
    if entry.nbytes > MAX_OFFSET:
        raise BundleError(f"manifest: {where} is {entry.nbytes} bytes, larger than any bundle file")
    return entry


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(f"manifest: {message}")


def _parse(raw: bytes, where: str) -> dict[str, Any]:
    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    def finite_float(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{text} overflows a float")
        return value

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant, parse_float=finite_float)
    except UnicodeDecodeError:
        raise BundleError(f"{where} is not UTF-8 text") from None
    except RecursionError:
        raise BundleError(f"{where} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, integers of too many digits, NaN/Infinity
        raise BundleError(f"{where} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(f"{where} is not a moedge bundle manifest")
    return data


def _read_spec(data: Any) -> ModelSpec:
    names = tuple(f.name for f in dataclasses.fields(ModelSpec))
    data = checks.record(data, "manifest: model", names, (), BundleError)
    if data["routing"] is not None:
        routing_fields = tuple(f.name for f in dataclasses.fields(RoutingSpec))
        checks.record(data["routing"], "manifest: model.routing", routing_fields, (), BundleError)
    checks.array(data["layer_kinds"], "manifest: model.layer_kinds", None, BundleError, limit=1024)
    try:
        return ModelSpec.from_dict(data).validate()
    except SpecError as exc:
        raise BundleError(f"manifest: invalid model spec: {exc}") from None


def _read_quantization(data: Any) -> tuple[str, int, str, str | None]:
    data = checks.record(data, "manifest: quantization", ("scheme", "group_size", "dense_linears"), ("head",),
                         BundleError)
    scheme = checks.choice(data["scheme"], "manifest: quantization.scheme", SCHEME_NAMES, BundleError)
    group = data["group_size"]
    if type(group) is not int or group not in (0, *GROUP_SIZES):
        raise BundleError(f"manifest: quantization.group_size must be 0 or one of {list(GROUP_SIZES)}, got {group!r}")
    _require(scheme != "float32" or group == 0, "float32 weights have no group size (quantization.group_size 0)")
    _require(scheme in ("float32", "int8") or group > 0, f"{scheme} weights need a group size")
    dense_linears = checks.choice(data["dense_linears"], "manifest: quantization.dense_linears", DENSE_LINEARS,
                                  BundleError)
    _require(dense_linears != "int4" or scheme in ("int4", "mixed"), "4-bit dense linears (quantization.dense_linears "
             f"int4) come with int4 or mixed experts, not {scheme}")
    head = data.get("head")
    if head is not None:
        head = checks.choice(head, "manifest: quantization.head", HEAD_SCHEMES, BundleError)
        _require((head == "float32") == (scheme == "float32"), f"a {head} LM head (quantization.head) does not go "
                 f"with {scheme} experts")
        _require(head != "int4" or group > 0, "an int4 LM head (quantization.head) needs a group size")
    return scheme, group, dense_linears, head


def _read_dense(data: Any, spec: ModelSpec, sizes: dict[str, int]) -> tuple[str, dict[str, TensorEntry]]:
    data = checks.record(data, "manifest: dense", ("file", "tensors"), (), BundleError)
    name = checks.plain_name(data["file"], "manifest: dense.file", BundleError)
    tensors = data["tensors"]
    _require(isinstance(tensors, dict), "dense.tensors must be an object")
    _require(len(tensors) <= 64 * spec.n_layers + 16, f"dense.tensors lists {len(tensors)} tensors")
    entries = {}
    for key, value in tensors.items():
        checks.text(key, "manifest: a dense tensor name", BundleError, limit=128)
        entries[key] = _tensor(value, f"manifest: dense.tensors.{key}")
        _require(entries[key].offset % PAGE == 0, f"dense.tensors.{key}.offset is not {PAGE}-byte aligned")
    size = sizes.get(name, 0)
    ordered = sorted(entries.items(), key=lambda kv: kv[1].offset)
    for (a, ea), (b, eb) in zip(ordered, ordered[1:], strict=False):
        _require(ea.end <= eb.offset, f"dense tensors {a} and {b} overlap")
    for key, entry in ordered:
        _require(entry.end <= size, f"dense tensor {key}: bytes [{entry.offset}, {entry.end}) lie outside "
                                    f"{name} ({size} bytes)")
    embed = entries.get(EMBEDDING)
    _require(embed is not None and embed.shape == (spec.vocab_size, spec.hidden_size) and embed.dtype == "float32",
             f"dense.tensors.{EMBEDDING} is missing or not float32 [vocab, hidden]")
    return name, entries


def _read_head(data: Any, dense: dict[str, TensorEntry], spec: ModelSpec, scheme: str, group: int,
               head_scheme: str) -> dict[str, str]:
    names = checks.record(data, "manifest: head", ("norm", "weight", "scale"), (), BundleError)
    weight_names = (HEAD_WEIGHT, EMBEDDING) if scheme == "float32" and spec.tie_embeddings else (HEAD_WEIGHT,)
    _require(names["norm"] == HEAD_NORM and names["scale"] == HEAD_SCALE and names["weight"] in weight_names,
             f"head must name {HEAD_NORM!r}, {' or '.join(map(repr, weight_names))} and {HEAD_SCALE!r}, got {names}")
    missing = [n for n in names.values() if n not in dense]
    _require(not missing, f"head tensor(s) {missing} are not in dense.tensors")
    norm, weight, scale = (dense[names[k]] for k in ("norm", "weight", "scale"))
    groups = head_groups(spec, group)
    stored = SCHEMES[head_scheme]
    shape = stored.stored_shape(spec.vocab_size, spec.hidden_size)
    _require(norm.shape == (spec.hidden_size,) and norm.dtype == "float32"
             and weight.shape == shape and weight.dtype == stored.code_dtype
             and scale.shape == (spec.vocab_size, groups) and scale.dtype == "float32",
             f"the head tensors must be norm float32 [{spec.hidden_size}], weight {stored.code_dtype} "
             f"{list(shape)} and scale float32 [{spec.vocab_size}, {groups}]")
    return dict(names)


def _read_experts(data: Any, spec: ModelSpec, scheme: str, group: int, sizes: dict[str, int]) -> ExpertsIndex:
    where = "manifest: experts"
    data = checks.record(data, where, ("file", "alignment", "group_size", "layouts", "schemes", "layers",
                                       "checksums"), (), BundleError)
    name = checks.plain_name(data["file"], f"{where}.file", BundleError)
    _require(data["alignment"] == PAGE and type(data["alignment"]) is int, f"experts.alignment must be {PAGE}")
    _require(data["group_size"] == group and type(data["group_size"]) is int,
             f"experts.group_size must equal quantization.group_size ({group})")
    keys = tuple(str(i) for i in spec.moe_layers)
    n_experts = spec.routing.n_experts
    allowed = MIXED_SCHEMES if scheme == "mixed" else (scheme,)
    raw_schemes = checks.record(data["schemes"], f"{where}.schemes", keys, (), BundleError)
    schemes = {int(key): tuple(checks.choice(s, f"{where}.schemes.{key}[i]", allowed, BundleError) for s in
                               checks.array(raw_schemes[key], f"{where}.schemes.{key}", n_experts, BundleError))
               for key in keys}
    used = tuple(sorted({s for layer in schemes.values() for s in layer}))
    layouts = {}
    for s, raw in checks.record(data["layouts"], f"{where}.layouts", used, (), BundleError).items():
        layout = checks.record(raw, f"{where}.layouts.{s}", ("span_bytes", "tensors"), (), BundleError)
        try:
            want, span = expert_span_layout(spec, group, s)
        except ValueError as exc:
            raise BundleError(f"manifest: {s} experts cannot have this model's shape: {exc}") from None
        tensors = checks.record(layout["tensors"], f"{where}.layouts.{s}.tensors", EXPERT_TENSORS, (), BundleError)
        for key in EXPERT_TENSORS:
            entry = _tensor(tensors[key], f"{where}.layouts.{s}.tensors.{key}")
            _require(entry == want[key], f"experts.layouts.{s}.tensors.{key} is {entry.to_dict()}, the span layout "
                                         f"of this model is {want[key].to_dict()}")
        _require(layout["span_bytes"] == span and type(layout["span_bytes"]) is int,
                 f"experts.layouts.{s}.span_bytes must be {span} for this model, got {layout['span_bytes']!r}")
        layouts[s] = ExpertLayout(span, want)
    raw_layers = checks.record(data["layers"], f"{where}.layers", keys, (), BundleError)
    raw_sums = checks.record(data["checksums"], f"{where}.checksums", keys, (), BundleError)
    size = sizes.get(name, 0)
    layers, sums, spans = {}, {}, []
    for key in keys:
        offsets = checks.array(raw_layers[key], f"{where}.layers.{key}", n_experts, BundleError)
        for e, off in enumerate(offsets):
            checks.integer(off, f"{where}.layers.{key}[{e}]", 0, MAX_OFFSET, BundleError)
            span = layouts[schemes[int(key)][e]].span_bytes
            if off < PAGE or off % PAGE or off + span > size:
                raise BundleError(f"experts file {name}: expert {e} of layer {key} at offset {off} "
                                  f"is not a page-aligned span inside the {size}-byte file")
            spans.append((off, span))
        layers[int(key)] = tuple(offsets)
        hexes = checks.array(raw_sums[key], f"{where}.checksums.{key}", n_experts, BundleError)
        sums[int(key)] = tuple(_checksum(h, f"{where}.checksums.{key}[i]") for h in hexes)
    spans.sort()
    if any(a + span > b for (a, span), (b, _) in zip(spans, spans[1:], strict=False)):
        raise BundleError(f"experts file {name}: expert spans overlap")
    return ExpertsIndex(name, group, layouts, schemes, layers, sums)


def _checksum(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 32 or value.strip("0123456789abcdef"):
        raise BundleError(f"{where} must be 32 lowercase hex digits, got {checks.show(value)}")
    return value


def _read_files(data: Any, referenced: dict[str, bool], bundle: BundleDir) -> tuple[dict[str, dict], dict[str, int]]:
    """Check `files` names exactly the `referenced` files (name -> has a whole-file checksum), with sizes
    matching the disk; return it and the sizes."""
    files = checks.record(data, "manifest: files", tuple(referenced), (), BundleError)
    sizes = {}
    for name, hashed in referenced.items():
        info = checks.record(files[name], f"manifest: files.{name}", ("size", "xxh3") if hashed else ("size",), (),
                             BundleError)
        expected = checks.integer(info["size"], f"manifest: files.{name}.size", 0, MAX_OFFSET, BundleError)
        if hashed:
            _checksum(info["xxh3"], f"manifest: files.{name}.xxh3")
        sizes[name] = bundle.size(name)
        if sizes[name] != expected:
            raise BundleError(f"{bundle.path / name} is {sizes[name]} bytes, the manifest says {expected}: "
                              "truncated or corrupt")
    return files, sizes


def _read_generation(data: Any, spec: ModelSpec) -> dict[str, Any]:
    where = "manifest: generation"
    data = checks.record(data, where, (), _GENERATION, BundleError)
    for key in ("bos_token_id", "eos_token_id"):
        value = data.get(key)
        ids = value if isinstance(value, list) else [] if value is None else [value]
        if key == "bos_token_id" and isinstance(value, list):
            raise BundleError(f"{where}.bos_token_id must be one token id")
        checks.array(ids, f"{where}.{key}", None, BundleError, limit=64)
        for token in ids:
            checks.integer(token, f"{where}.{key}", 0, spec.vocab_size - 1, BundleError)
    if "chat_template" in data:
        checks.text(data["chat_template"], f"{where}.chat_template", BundleError)
    if "special_tokens" in data:
        tokens = checks.record(data["special_tokens"], f"{where}.special_tokens", (), _SPECIAL_TOKENS, BundleError)
        for key, value in tokens.items():
            checks.text(value, f"{where}.special_tokens.{key}", BundleError, limit=256)
    return data


def _read_quant_report(data: Any, spec: ModelSpec) -> dict[str, Any]:
    where = "manifest: quant_report"
    data = checks.record(data, where, ("layers", "head"), (), BundleError)
    layers = checks.record(data["layers"], f"{where}.layers", tuple(str(i) for i in spec.moe_layers), (), BundleError)
    rows = [(f"{where}.layers.{k}", v, ("max_abs", "rel_fro_max", "cosine_min")) for k, v in layers.items()]
    for label, row, keys in [*rows, (f"{where}.head", data["head"], ("max_abs", "rel_fro", "cosine"))]:
        row = checks.record(row, label, keys, (), BundleError)
        for key in keys:
            checks.number(row[key], f"{label}.{key}", -1.0, 1e30, BundleError)
    return data


def check_experts_header(head: bytes, path: Path) -> None:
    """Check the first bytes of an experts file: magic, version and header size."""
    if len(head) < EXPERTS_HEADER.size:
        raise BundleError(f"{path}: too short to be a moedge experts file")
    magic, version, header = EXPERTS_HEADER.unpack(head[:EXPERTS_HEADER.size])
    if magic != EXPERTS_MAGIC:
        raise BundleError(f"{path}: not a moedge experts file (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: experts file version {version}, this runtime reads {FORMAT_VERSION}")
    if header != PAGE:
        raise BundleError(f"{path}: experts header of {header} bytes, the format says {PAGE}")


def read_manifest(root: str | Path | BundleDir, verify: bool = True) -> Manifest:
    """Read and validate `root/manifest.json` against the files beside it.

    `verify` checks the manifest's own checksum (the files' checksums are checked when they are used).
    """
    if not isinstance(root, BundleDir):
        with BundleDir(root) as bundle:
            return read_manifest(bundle, verify)
    bundle, where = root, str(root.path / MANIFEST)
    if not bundle.exists(MANIFEST):
        raise BundleError(f"{bundle.path} is not a moedge bundle: no {MANIFEST}")
    data = _parse(bundle.read(MANIFEST, MANIFEST_LIMIT), where)
    version = data.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise BundleError(f"bundle format version {checks.show(version)} is not supported by this runtime "
                          f"(it reads version {FORMAT_VERSION}); re-export the model")
    checks.record(data, f"{where}", _FIELDS, (), BundleError)
    if verify and data[CHECKSUM_FIELD] != manifest_checksum(data):
        raise BundleError(f"{where}: checksum mismatch, the manifest is corrupt or was edited after export")
    spec = _read_spec(data["model"])
    scheme, group, dense_linears, head_scheme = _read_quantization(data["quantization"])
    graphs = checks.record(data["graphs"], "manifest: graphs", ("layers",), ("full",), BundleError)
    layer_graphs = tuple(checks.plain_name(n, "manifest: graphs.layers[i]", BundleError)
                         for n in checks.array(graphs["layers"], "manifest: graphs.layers", spec.n_layers, BundleError))
    full = graphs.get("full")
    if full is not None:
        checks.plain_name(full, "manifest: graphs.full", BundleError)
    dense_file = checks.plain_name(checks.record(data["dense"], "manifest: dense", ("file", "tensors"), (),
                                                 BundleError)["file"], "manifest: dense.file", BundleError)
    _require((data["experts"] is None) == (not spec.is_moe), "experts must be an object for an MoE model, else null")
    experts_file = None
    if data["experts"] is not None:
        _require(isinstance(data["experts"], dict), "experts must be an object for an MoE model")
        experts_file = checks.plain_name(data["experts"].get("file"), "manifest: experts.file", BundleError)
    tokenizer = data["tokenizer"]
    if tokenizer is not None:
        checks.plain_name(tokenizer, "manifest: tokenizer", BundleError)
    named = [*layer_graphs, *([full] if full else []), dense_file, *([tokenizer] if tokenizer else []),
             *([experts_file] if experts_file else [])]
    _require(len(set(named)) == len(named) and MANIFEST not in named, f"file names repeat: {named}")
    referenced = {name: name != experts_file for name in named}
    files, sizes = _read_files(data["files"], referenced, bundle)
    dense_file, dense_tensors = _read_dense(data["dense"], spec, sizes)
    head = _read_head(data["head"], dense_tensors, spec, scheme, group,
                      head_scheme or default_head_scheme(scheme, dense_linears))
    experts = None
    if experts_file is not None:
        experts = _read_experts(data["experts"], spec, scheme, group, sizes)
    return Manifest(spec=spec, quant_scheme=scheme, group_size=group, dense_linears=dense_linears,
                    layer_graphs=layer_graphs, head=head, dense_file=dense_file, dense_tensors=dense_tensors,
                    experts=experts, tokenizer=tokenizer, files=files,
                    generation=_read_generation(data["generation"], spec),
                    quant_report=_read_quant_report(data["quant_report"], spec), full_graph=full,
                    head_scheme=head_scheme)
