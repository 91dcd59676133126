"""The float32 PyTorch model of a checkpoint, scored on the same windows as a bundle.

`moedge eval --reference CHECKPOINT` uses this to compare a bundle with its source: the
perplexity of the float model and its top-1 prediction at every position. The checkpoint is
a moedge checkpoint or a Hugging Face folder (anything `moedge export` reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..runtime.spec import ModelSpec
from ..runtime.tools.evaluate import Evaluation, score
from .checkpoint import TOKENIZER_FILE, source_model
from .source import ExportError, Source, open_source

SHAPE_FIELDS = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
                "layer_kinds", "expert_intermediate_size", "max_seq_len")


def _source(checkpoint: str | Path | Source) -> Source:
    return checkpoint if isinstance(checkpoint, Source) else open_source(checkpoint)


def reference_tokenizer(checkpoint: str | Path | Source) -> Tokenizer:
    """The checkpoint's own tokenizer (it must match the bundle's for a fair comparison)."""
    source = _source(checkpoint)
    if source.tokenizer_file is None:
        raise ExportError(f"{checkpoint}: no {TOKENIZER_FILE} in the reference checkpoint")
    return Tokenizer.from_file(str(source.tokenizer_file))


def shape_differences(reference: ModelSpec, bundle: ModelSpec) -> list[str]:
    """The shape fields (vocabulary, widths, layers, experts) in which two specs differ, as `name ref vs bundle`."""
    diffs = [f"{name} {getattr(reference, name)} vs {getattr(bundle, name)}" for name in SHAPE_FIELDS
             if getattr(reference, name) != getattr(bundle, name)]
    experts = [spec.routing.n_experts if spec.routing else 0 for spec in (reference, bundle)]
    if experts[0] != experts[1]:
        diffs.append(f"experts {experts[0]} vs {experts[1]}")
    return diffs


@torch.no_grad()
def evaluate_reference(checkpoint: str | Path | Source, windows: list[np.ndarray]) -> Evaluation:
    """Score `windows` with the float model of `checkpoint` (a folder or an opened `Source`), each window a
    fresh sequence."""
    model = source_model(_source(checkpoint))

    def window_logits(ids: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(ids)[None])[0].numpy()

    nll, count, predictions = score(windows, window_logits, desc="eval reference")
    return Evaluation(nll, count, predictions)
