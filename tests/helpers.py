"""What the tests share: tiny model specs, seeded models and their bundles, the CLI in a subprocess,
and the sample scripts as modules. Fixtures live in `conftest.py`."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import MethodType, ModuleType

import torch
import torch.nn.functional as F

from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.model import Attention, Experts, SwiGLU, Transformer
from moedge.quant import SCHEMES, dequantize, fake_quantize_activations
from moedge.runtime.spec import ModelSpec, RoutingSpec
from moedge.runtime.tools.residency import resident_pages

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


def round_trip(w: torch.Tensor, group_size: int | None, scheme: str = "int8") -> torch.Tensor:
    """`w` quantized with `scheme` (quant.SCHEMES) and back."""
    return torch.from_numpy(dequantize(SCHEMES[scheme].quantize(w.detach().numpy(), group_size or 0)))


def dequantized_reference(model: Transformer, group_size: int | None, bits: int = 8) -> Transformer:
    """The float model whose experts are replaced by their int8 (or int4) round trip and the LM head by
    its int8 one (int4 bundles: groups of 32 unless `group_size` says).

    A tied head gets its own quantized copy; the embedding lookup stays float, as in a bundle.
    """
    group_size = group_size or (32 if bits == 4 else None)
    with torch.no_grad():
        for moe in model.moe_layers():
            for w in (moe.experts.gate, moe.experts.up, moe.experts.down):
                w.copy_(round_trip(w, group_size, f"int{bits}"))
        head = model.embed.weight if model.lm_head is None else model.lm_head.weight
        model.lm_head = torch.nn.Linear(model.spec.hidden_size, model.spec.vocab_size, bias=False)
        model.lm_head.weight.copy_(round_trip(head, group_size))
    return model


def fake_quantized(v: torch.Tensor) -> torch.Tensor:
    """v quantized to int8 blocks of 32 and back (`quant.fake_quantize_activations`)."""
    return torch.from_numpy(fake_quantize_activations(v.detach().numpy()))


def with_int8_activations(model: Transformer) -> Transformer:
    """A copy of `model` whose experts take their input and hidden vectors, and whose LM head its normalized
    input, quantized to int8 blocks of 32 and back, as the runtime's kernels do with
    `activations="int8"`: `Experts.forward` with those two steps added, a hook on the final norm."""
    fake = fake_quantized

    def forward(experts: Experts, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out, x = torch.zeros_like(x), fake(x)
        for e in idx.unique().tolist():
            rows, slot = (idx == e).nonzero(as_tuple=True)
            h = fake(F.silu(x[rows] @ experts.gate[e].T) * (x[rows] @ experts.up[e].T))
            out.index_add_(0, rows, (h @ experts.down[e].T) * weights[rows, slot, None])
        return out

    quantized = copy.deepcopy(model)
    for moe in quantized.moe_layers():
        moe.experts.forward = MethodType(forward, moe.experts)
    quantized.norm.register_forward_hook(lambda _, args, out: fake(out))
    return quantized


def with_int8_linear_activations(model: Transformer) -> Transformer:
    """A copy of `model` (`with_int8_activations`: its experts and head too) whose attention, dense-FFN and
    shared-expert linears take their inputs quantized to int8 blocks of 32 and back, as one-token steps do by
    default."""
    quantized = with_int8_activations(model)
    for block in quantized.modules():
        if isinstance(block, (Attention, SwiGLU)):
            for linear in block.children():
                if isinstance(linear, torch.nn.Linear):
                    linear.register_forward_pre_hook(lambda _, args: (fake_quantized(args[0]),))
    return quantized


class Exported:
    """A tiny model's checkpoint, its bundle, and the float reference matching the bundle's experts.

    The attention/dense-FFN matrices stay float32 (`float_dense`): the reference is exact only with
    float activations (int8 dense linears are tested in test_dense_int8)."""

    def __init__(self, spec: ModelSpec, root: Path, group_size: int | None = None, float_experts: bool = False,
                 bits: int = 8):
        self.spec, self.float_experts = spec, float_experts
        model = build_model(spec)
        self.checkpoint = save_checkpoint(model, root / "ckpt")
        self.bundle = root / "model.moedge"
        export(self.checkpoint, self.bundle, group_size=group_size, bits=bits, show_progress=False,
               float_experts=float_experts, float_dense=True)
        self.reference = model if float_experts else dequantized_reference(model, group_size, bits)


ROOT = Path(__file__).resolve().parents[1]


def greedy_tokens(bundle, prompt: list[int], n: int = 32) -> list[int]:
    """The bundle's `n` greedy tokens after `prompt`: one prefill, then decode steps."""
    from moedge.runtime import Model

    session = Model.load(bundle, threads=1).session()
    tokens = [int(session.prefill(prompt)[-1].argmax())]
    while len(tokens) < n:
        tokens.append(int(session.decode(tokens[-1]).argmax()))
    return tokens


# The head of a `python -c` script that is sent Ctrl-C: SIGINT raises KeyboardInterrupt in it even when the tests
# run as a background job, whose SIGINT is ignored and stays ignored in its children (Python then installs no handler).
INTERRUPTIBLE = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
CLI_MAIN = "import sys; from moedge.cli.main import main; sys.exit(main(sys.argv[1:]))\n"


def run_cli(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`moedge ARGS...` in a fresh process (as a user runs it); text output captured unless `stdout`/`stderr` say."""
    streams = {"stdout": kwargs.pop("stdout", subprocess.PIPE), "stderr": kwargs.pop("stderr", subprocess.PIPE)}
    return subprocess.run([sys.executable, "-m", "moedge.cli.main", *map(str, args)], text=True, timeout=timeout,
                          **streams, **kwargs)


def sample_module(name: str) -> ModuleType:
    """A script of `samples/` (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(f"samples_{name}", ROOT / "samples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAGE = 4096


def mapped_bytes(store) -> int:
    """Resident bytes of the memory the store holds experts in: its map of the experts file, or its slots under a
    budget (mincore over exactly that range: /proc/self/smaps would also count a neighbouring mapping merged into
    the slots' one)."""
    return int(resident_pages(store.address, store.size).sum()) * PAGE


def resident_bytes(start: int, size: int) -> int:
    """Resident bytes of the mappings inside [start, start + size) (from /proc/self/smaps)."""
    end = start + size
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = start <= lo and hi <= end + PAGE
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total
