"""Write the shipped default model: a small MoE built from a fixed seed, with a byte-level BPE
tokenizer trained locally on Python's own documentation (pydoc_data.topics).

    python samples/make_default.py OUT_DIR

The weights are random (a trained default replaces them later); the folder is a moedge
checkpoint that `moedge export OUT_DIR -o BUNDLE` turns into a bundle.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from pydoc_data.topics import topics

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moedge.exporter.checkpoint import save_checkpoint
from moedge.exporter.model import Transformer
from moedge.runtime.spec import ModelSpec, RoutingSpec

SEED = 0
VOCAB = 1000


def byte_level_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts` (every byte is representable)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def default_spec(vocab_size: int) -> ModelSpec:
    return ModelSpec(vocab_size=vocab_size, hidden_size=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=32,
                     intermediate_size=512, layer_kinds=("moe",) * 4, max_seq_len=1024,
                     expert_intermediate_size=384, routing=RoutingSpec(n_experts=8, top_k=2))


def main(out: str) -> Path:
    tokenizer = byte_level_bpe(list(topics.values()), VOCAB)
    torch.manual_seed(SEED)
    model = Transformer(default_spec(tokenizer.get_vocab_size()))
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tok_file))
        eos = tokenizer.token_to_id("<|endoftext|>")
        return save_checkpoint(model, out, tok_file, {"eos_token_id": eos})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the checkpoint to")
    print(main(parser.parse_args().out))
