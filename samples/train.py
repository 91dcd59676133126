"""Train a small MoE or dense language model on Python's docs and stdlib sources, on the CPU.

    python samples/train.py moe OUT_DIR [--steps 600] [--seed 0]
    python samples/train.py dense OUT_DIR
    python samples/train.py moe OUT_DIR --tiny --steps 20      # smoke test

Deterministic from `--seed` (fixed thread count, seeded init and batches). Writes a moedge
checkpoint (spec, float32 safetensors, a byte-level BPE tokenizer trained here, generation.json),
`loss.png` (train and held-out loss) and `train.json` (settings, losses, wall time) to OUT_DIR.
The MoE is 8 experts, top-2, with a Switch-style load-balancing loss on the router; the dense
model has the same shape with one FFN as wide as the two active experts together.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from corpus import documents, split
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.model import Transformer
from moedge.runtime.spec import ModelSpec, RoutingSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EOS = "<|endoftext|>"
THREADS = 1  # one thread each: deterministic, and robust when the cores are shared


def byte_level_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts` (every byte is representable)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def model_spec(kind: str, vocab_size: int, tiny: bool) -> ModelSpec:
    """The MoE (8 experts of 128, top-2) or the dense model of the same active size (FFN 256)."""
    hidden, layers, expert = (64, 2, 32) if tiny else (256, 4, 128)
    routing = RoutingSpec(n_experts=8, top_k=2)
    moe = kind == "moe"
    return ModelSpec(vocab_size=vocab_size, hidden_size=hidden, n_layers=layers, n_heads=hidden // 32,
                     n_kv_heads=max(1, hidden // 128), head_dim=32, intermediate_size=routing.top_k * expert,
                     layer_kinds=(kind,) * layers, max_seq_len=64 if tiny else 256, tie_embeddings=True,
                     expert_intermediate_size=expert if moe else 0, routing=routing if moe else None)


def init_weights(model: Transformer) -> None:
    """GPT-2 style: N(0, 0.02), output projections scaled down by sqrt(2 · layers)."""
    out_std = 0.02 / math.sqrt(2 * model.spec.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            continue
        is_out = name.endswith(("wo.weight", "down.weight", "experts.down"))
        torch.nn.init.normal_(p, std=out_std if is_out else 0.02)


def balance_loss(model: Transformer) -> torch.Tensor:
    """Switch-Transformer load-balancing loss, averaged over MoE layers (1.0 when uniform)."""
    losses = []
    for moe in model.moe_layers():
        probs = moe.last_router_probs  # [N, E]
        e, k = probs.shape[-1], moe.routing.top_k
        chosen = F.one_hot(probs.topk(k, dim=-1).indices, e).sum(1).float()  # [N, E]
        losses.append(e * (chosen.mean(0) / k * probs.mean(0)).sum())
    return torch.stack(losses).mean() if losses else torch.zeros(())


def token_stream(tok: Tokenizer, docs: list[tuple[str, str]]) -> torch.Tensor:
    """All documents encoded and joined by end-of-text tokens, int64 [N]."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch([text for _, text in docs]):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def sample_batch(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])  # [B, T+1]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: Transformer, windows: torch.Tensor) -> float:
    model.eval()
    logits = model(windows[:, :-1])
    model.train()
    return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()


def plot_losses(history: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(history["step"], history["train"], label="train (smoothed)", lw=1.2)
    ax.plot(history["eval_step"], history["heldout"], "o-", label="held-out", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(kind: str, out: str, steps: int = 600, seed: int = 0, batch: int = 8, lr: float = 3e-3,
          aux_weight: float = 0.01, vocab: int = 2048, tiny: bool = False) -> Path:
    """Train one model and write its checkpoint, loss curve and log to `out`."""
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    train_docs, heldout_docs = split(documents())
    if tiny:
        train_docs, heldout_docs, vocab = train_docs[:8], heldout_docs[:2], 512
    tok = byte_level_bpe([text for _, text in train_docs], vocab)
    spec = model_spec(kind, tok.get_vocab_size(), tiny)
    seq = spec.max_seq_len
    stream, held = token_stream(tok, train_docs), token_stream(tok, heldout_docs)
    gen = torch.Generator().manual_seed(seed)
    held_windows = sample_batch(held, 16, seq, torch.Generator().manual_seed(seed + 1))
    model = Transformer(spec)
    init_weights(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    history: dict[str, list] = {"step": [], "train": [], "eval_step": [], "heldout": [], "balance": []}
    smooth = None
    eval_every = max(1, steps // 24)
    bar = tqdm(range(steps), desc=f"train {kind}", unit="step", file=sys.stderr)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 20))
        x = sample_batch(stream, batch, seq, gen)
        logits = model(x[:, :-1])
        ce = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        aux = balance_loss(model) if spec.is_moe else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (ce + aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = ce.item() if smooth is None else 0.95 * smooth + 0.05 * ce.item()
        history["step"].append(step + 1)
        history["train"].append(smooth)
        history["balance"].append(aux.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            history["eval_step"].append(step + 1)
            history["heldout"].append(heldout_loss(model, held_windows))
        bar.set_postfix(loss=f"{smooth:.3f}", held=f"{history['heldout'][-1]:.3f}" if history["heldout"] else "-",
                        bal=f"{aux.item():.3f}")
    elapsed = time.perf_counter() - started
    out_dir = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tok.save(str(tok_file))
        save_checkpoint(model.eval(), out_dir, tok_file, {"eos_token_id": tok.token_to_id(EOS)})
    plot_losses(history, out_dir / "loss.png",
                f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {steps} steps, "
                f"{elapsed / 60:.1f} min")
    log = {"kind": kind, "steps": steps, "seed": seed, "batch": batch, "seq": seq, "lr": lr,
           "aux_weight": aux_weight, "vocab": spec.vocab_size, "tiny": tiny, "threads": THREADS,
           "python": platform.python_version(), "torch": torch.__version__,
           "train_tokens": len(stream), "heldout_tokens": len(held), "wall_seconds": round(elapsed, 1),
           "final_train_loss": history["train"][-1], "final_heldout_loss": history["heldout"][-1],
           "heldout": list(zip(history["eval_step"], history["heldout"], strict=True))}
    (out_dir / "train.json").write_text(json.dumps(log, indent=2))
    print(f"{kind}: {steps} steps in {elapsed / 60:.1f} min, held-out loss {log['final_heldout_loss']:.3f} "
          f"(ppl {math.exp(log['final_heldout_loss']):.1f}) → {out_dir}")
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["moe", "dense"])
    parser.add_argument("out", help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--aux-weight", type=float, default=0.01, help="load-balancing loss weight")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on a few documents (smoke test)")
    args = parser.parse_args()
    train(**{k.replace("-", "_"): v for k, v in vars(args).items()})
