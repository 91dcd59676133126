"""Tiny models for the tests: built from a seed, saved as checkpoints, exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.model import Transformer
from moedge.quant import dequantize, quantize_int8
from moedge.runtime.spec import ModelSpec, RoutingSpec

VOCAB = 203  # not a multiple of 8 on purpose


def tiny_moe_spec(**overrides) -> ModelSpec:
    routing = RoutingSpec(**{"n_experts": 8, "top_k": 2, **overrides.pop("routing", {})})
    fields = dict(vocab_size=VOCAB, hidden_size=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
                  intermediate_size=96, layer_kinds=("moe",) * 4, max_seq_len=96,
                  expert_intermediate_size=32, routing=routing)
    fields.update(overrides)
    return ModelSpec(**fields)


def tiny_dense_spec(**overrides) -> ModelSpec:
    fields = dict(vocab_size=VOCAB, hidden_size=64, n_layers=3, n_heads=4, n_kv_heads=4, head_dim=16,
                  intermediate_size=96, layer_kinds=("dense",) * 3, max_seq_len=96, tie_embeddings=True)
    fields.update(overrides)
    return ModelSpec(**fields)


def drop_page_cache(path) -> None:
    """Evict a (written and synced) file from the page cache, so residency checks start from nothing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def build_model(spec: ModelSpec, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(spec)
    with torch.no_grad():  # non-trivial norm weights so a wrong norm shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def round_trip(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    return torch.from_numpy(dequantize(quantize_int8(w.detach().numpy(), group_size)))


def dequantized_reference(model: Transformer, group_size: int | None) -> Transformer:
    """The float model whose experts and LM head are replaced by their int8 round trip.

    A tied head gets its own quantized copy; the embedding lookup stays float, as in a bundle.
    """
    with torch.no_grad():
        for moe in model.moe_layers():
            for w in (moe.experts.gate, moe.experts.up, moe.experts.down):
                w.copy_(round_trip(w, group_size))
        head = model.embed.weight if model.lm_head is None else model.lm_head.weight
        model.lm_head = torch.nn.Linear(model.spec.hidden_size, model.spec.vocab_size, bias=False)
        model.lm_head.weight.copy_(round_trip(head, group_size))
    return model


class Exported:
    """A tiny model's checkpoint, its bundle, and the float reference matching the bundle's experts."""

    def __init__(self, spec: ModelSpec, root: Path, group_size: int | None = None, float_experts: bool = False):
        self.spec = spec
        model = build_model(spec)
        self.checkpoint = save_checkpoint(model, root / "ckpt")
        self.bundle = root / "model.moedge"
        export(self.checkpoint, self.bundle, group_size=group_size, show_progress=False,
               float_experts=float_experts)
        self.reference = model if float_experts else dequantized_reference(model, group_size)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, spec, group_size=None, float_experts=False) → an `Exported`, built once per name."""
    cache: dict[str, Exported] = {}

    def get(name: str, spec: ModelSpec, group_size: int | None = None, float_experts: bool = False) -> Exported:
        if name not in cache:
            cache[name] = Exported(spec, tmp_path_factory.mktemp(name), group_size, float_experts)
        return cache[name]

    return get


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
