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


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
