"""The float32 PyTorch model of a checkpoint, scored on the same windows as a bundle.

`moedge eval --reference CHECKPOINT` uses this to compare a bundle with its source: the
perplexity of the float model and its top-1 prediction at every position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..runtime.tools.evaluate import Evaluation, score
from .checkpoint import TOKENIZER_FILE, load_model
from .source import ExportError


def reference_tokenizer(checkpoint: str | Path) -> Tokenizer:
    """The checkpoint's own tokenizer (it must match the bundle's for a fair comparison)."""
    path = Path(checkpoint) / TOKENIZER_FILE
    if not path.is_file():
        raise ExportError(f"{checkpoint}: no {TOKENIZER_FILE} in the reference checkpoint")
    return Tokenizer.from_file(str(path))


@torch.no_grad()
def evaluate_reference(checkpoint: str | Path, windows: list[np.ndarray]) -> Evaluation:
    """Score `windows` with the float model of `checkpoint`, each window a fresh sequence."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder")
    model = load_model(folder)

    def window_logits(ids: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(ids)[None])[0].numpy()

    nll, count, predictions = score(windows, window_logits, desc="eval reference")
    return Evaluation(nll, count, predictions)
