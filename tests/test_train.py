"""`samples/train.py` as a smoke test: a tiny MoE for 20 steps, twice, gives the same checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from moedge.exporter.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


def train_tiny(out: Path, steps: int = 20) -> Path:
    subprocess.run([sys.executable, str(ROOT / "samples" / "train.py"), "moe", str(out), "--tiny", "--steps",
                    str(steps), "--batch", "4"], check=True, capture_output=True, timeout=300)
    return out


def test_train_smoke_is_deterministic(tmp_path):
    first, second = train_tiny(tmp_path / "a"), train_tiny(tmp_path / "b")
    for name in ("moedge_spec.json", "model.safetensors", "tokenizer.json", "generation.json", "loss.png"):
        assert (first / name).is_file(), name
    log = json.loads((first / "train.json").read_text())
    assert log["steps"] == 20 and log["heldout"][-1][1] < log["heldout"][0][1] - 0.3  # it learns
    a, b = load_model(first).state_dict(), load_model(second).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(first).spec.is_moe
