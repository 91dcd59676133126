"""The functions behind `moedge` subcommands; each flag is one keyword argument."""

from __future__ import annotations

import sys
import time

import numpy as np


def export(src: str, out: str, group_size: int | None = None, force: bool = False,
           float_experts: bool = False) -> None:
    """Export a checkpoint folder (moedge or Hugging Face) to a bundle."""
    from moedge.exporter import export as export_bundle  # torch is only needed here

    manifest = export_bundle(src, out, group_size=group_size, force=force, float_experts=float_experts)
    sizes = manifest.files
    experts = sizes.get(manifest.experts.file, {}).get("size", 0) if manifest.experts else 0
    dense = sum(v["size"] for k, v in sizes.items() if k.endswith((".bin", ".onnx"))) - experts
    print(f"wrote {out}: dense {dense / 1e6:.1f} MB, experts {experts / 1e6:.1f} MB ({manifest.quant_scheme})")


def run(bundle: str, prompt: str, n: int = 64, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
        seed: int | None = None, threads: int | None = None) -> None:
    """Generate text from a prompt, streaming it; then print latency and expert usage."""
    from moedge.runtime import Model

    t0 = time.perf_counter()
    model = Model.load(bundle, threads=threads)
    loaded = time.perf_counter()
    stamps = [loaded]
    sys.stdout.write(prompt)
    for token in model.generate(prompt, max_new_tokens=n, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed):
        stamps.append(time.perf_counter())
        sys.stdout.write(token.text)
        sys.stdout.flush()
    print()
    line = f"\nload {1e3 * (loaded - t0):.0f} ms, {len(stamps) - 1} tokens"
    if len(stamps) > 1:
        line += f", first token {1e3 * (stamps[1] - loaded):.0f} ms (prefill included)"
    if len(stamps) > 2:
        ms = float(np.median(np.diff(stamps[1:]))) * 1e3
        line += f", decode {ms:.2f} ms/token (median), {1e3 / ms:.1f} tokens/s"
    print(line)
    store = model.experts
    if store is not None:
        total = store.touched.size - (store.offsets < 0).sum()
        print(f"experts touched: {store.first_touches} of {total} "
              f"({store.bytes_touched / 1e6:.1f} MB of {store.size / 1e6:.1f} MB)")


def inspect(bundle: str, verify: bool = False) -> None:
    """Print a bundle's spec, file sizes and per-layer quantization error."""
    from moedge.runtime.bundle import read_manifest
    from moedge.runtime.integrity import verify_checksums

    manifest = read_manifest(bundle)
    spec = manifest.spec
    print(f"model: {spec.n_layers} layers ({spec.layer_kinds.count('moe')} MoE), hidden {spec.hidden_size}, "
          f"heads {spec.n_heads}/{spec.n_kv_heads}, head dim {spec.head_dim}, vocab {spec.vocab_size}, "
          f"context {spec.max_seq_len}")
    if spec.routing:
        r = spec.routing
        print(f"routing: {r.n_experts} experts of {spec.expert_intermediate_size}, top-{r.top_k}, "
              f"{r.score_func}, normalize={r.normalize_top_k}, shared={r.shared_expert_size}")
    for name, info in sorted(manifest.files.items()):
        print(f"  {name:24s} {info['size'] / 1e6:10.2f} MB")
    if manifest.experts:
        x = manifest.experts
        print(f"experts: {manifest.quant_scheme}, group {x.group_size or 'per-channel'}, "
              f"{x.span_bytes} bytes per expert span")
        for layer, err in sorted(manifest.quant_report.get("layers", {}).items(), key=lambda kv: int(kv[0])):
            print(f"  layer {int(layer):3d}: max abs {err['max_abs']:.2e}, rel frobenius ≤ {err['rel_fro_max']:.2e}, "
                  f"cosine ≥ {err['cosine_min']:.6f}")
    if verify:
        verify_checksums(bundle, manifest)
        print("checksums: ok")
