"""Write a bundle (see FORMAT.md) from a `Source`: the dense file, the layer graphs, the experts file,
the tokenizer and the manifest with its checksums, into a folder that `output` renames into place."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
from tqdm import tqdm

from ..runtime.bundle import (
    GRAPH_CONTRACT_KEY,
    GRAPH_LAYER_KEY,
    MANIFEST,
    NBITS,
    Manifest,
    TensorEntry,
    graph_contract,
    read_manifest,
)
from ..runtime.bundle_dir import BundleDir
from ..runtime.errors import BundleError
from ..runtime.spec import ModelSpec
from .dense_writer import DENSE_FILE, write_dense
from .experts_writer import EXPERTS_FILE, write_experts
from .full_graph import write_full_graph
from .mixed_precision import mixed_schemes
from .onnx_graphs import layer_graph
from .options import ExportOptions
from .output import write_atomically
from .source import ExportError, Source


def _write_graphs(spec: ModelSpec, root: Path, dense: dict[str, TensorEntry], contract: str, bits: int,
                  progress: tqdm) -> list[str]:
    """One graph per layer, each carrying its layer index and the contract it was built for."""
    names = []
    for i in range(spec.n_layers):
        names.append(f"layer_{i:03d}.onnx")
        graph = layer_graph(spec, i, DENSE_FILE, dense.get, bits)
        onnx.helper.set_model_props(graph, {GRAPH_LAYER_KEY: str(i), GRAPH_CONTRACT_KEY: contract})
        _save_checked(graph, root / names[-1])
        progress.update(1)
    return names


def _save_checked(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def write_bundle_files(source: Source, root: Path, options: ExportOptions) -> Manifest:
    """Write every file of a bundle into the (empty) folder `root`; return its manifest."""
    spec = source.spec
    options.check_model(spec)
    with tqdm(total=spec.n_layers + len(spec.moe_layers), desc="export", unit="layer",
              disable=not options.show_progress) as progress:
        dense, head, head_error, dense_linears = write_dense(source, root / DENSE_FILE, options)
        quantization = options.quantization(dense_linears)
        contract = graph_contract(spec, quantization, {"file": DENSE_FILE,
                                                       "tensors": {k: v.to_dict() for k, v in dense.items()}})
        graphs = _write_graphs(spec, root, dense, contract, NBITS.get(dense_linears, 8), progress)
        experts, report = (None, {})
        if spec.is_moe:
            schemes = None
            if options.scheme == "mixed":
                schemes = mixed_schemes(source, options.int8_fraction, options.group, options.calibration)
            experts, report = write_experts(source, root / EXPERTS_FILE, options, progress, schemes)
    tokenizer = None
    if source.tokenizer_file is not None:
        tokenizer = "tokenizer.json"
        shutil.copyfile(source.tokenizer_file, root / tokenizer)
    elif source.tokenizer_json is not None:
        tokenizer = "tokenizer.json"
        (root / tokenizer).write_text(source.tokenizer_json)
    manifest = Manifest(spec=spec, quant_scheme=quantization["scheme"], group_size=options.group,
                        dense_linears=quantization["dense_linears"],
                        layer_graphs=tuple(graphs), head=head, dense_file=DENSE_FILE,
                        dense_tensors=dense, experts=experts, tokenizer=tokenizer, files={},
                        generation=source.generation, quant_report={"layers": report, "head": head_error},
                        head_scheme=quantization.get("head"))
    if options.full_graph:
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


def write_bundle(source: Source, out: str | Path, options: ExportOptions | None = None) -> Manifest:
    """Export `source` to the bundle folder `out`; nothing is left at `out` if this fails."""
    options = options or ExportOptions()
    return write_atomically(Path(out).absolute(), options.force,
                            lambda folder: write_bundle_files(source, folder, options))
