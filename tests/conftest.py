"""Fixtures: tiny models exported once per session (see `helpers` for what they are made of)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import Exported
from moedge.runtime.spec import ModelSpec


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, spec, group_size=None, float_experts=False, bits=8) → an `Exported`, built once per name."""
    cache: dict[str, Exported] = {}

    def get(name: str, spec: ModelSpec, group_size: int | None = None, float_experts: bool = False,
            bits: int = 8) -> Exported:
        if name not in cache:
            cache[name] = Exported(spec, tmp_path_factory.mktemp(name), group_size, float_experts, bits)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def chat_bundle(tmp_path_factory):
    """A tiny Qwen3 exported with a word-level tokenizer of its vocabulary and a chat template:
    (bundle, transformers tokenizer). Float attention matrices, so prefill and decode agree to float error."""
    from hf_tiny import CHAT_VOCAB, build_hf_model, chat_tokenizer, save_hf_model
    from moedge.exporter import export

    root = tmp_path_factory.mktemp("chat")
    folder = save_hf_model(build_hf_model("qwen3", vocab_size=CHAT_VOCAB), root / "hf")
    tokenizer = chat_tokenizer()
    tokenizer.save_pretrained(folder)
    export(folder, root / "chat.moedge", show_progress=False, float_dense=True)
    return root / "chat.moedge", tokenizer


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
