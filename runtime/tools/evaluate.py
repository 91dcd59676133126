"""Perplexity and next-token predictions of a bundle on text, and how often each expert was chosen.

Text is tokenized per document and cut into non-overlapping windows of the context length; each
window starts a fresh sequence, so a window's first token is context only and every other token
is predicted once. The same windows feed the float reference (`moedge.exporter.reference`), so
the two sides' predictions line up position by position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..forward import RoutingTrace
from .locality import CACHED_FRACTIONS, guess_recall, lru_hit_rate, optimal_hit_rate

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class Evaluation:
    """Summed negative log-likelihood over `tokens` predicted tokens, and the argmax predictions."""

    nll: float  # nats, summed
    tokens: int
    predictions: np.ndarray  # int64 [tokens], the top-1 next token at every predicted position
    usage: np.ndarray | None = None  # int64 [n_layers, n_experts]: times each expert was chosen
    cache_hit_rates: dict[float, float] | None = None  # LRU hit rate with that fraction of each layer's experts
    guess_recall: float | None = None  # share of routed experts the next-layer guess named (read-ahead)
    optimal_hit_rates: dict[float, float] | None = None  # the most any cache of that size hits (`locality`)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.tokens))

    def agreement(self, other: Evaluation) -> float:
        """Fraction of positions where both evaluations predict the same next token."""
        if other.tokens != self.tokens:
            raise InputError(f"cannot compare evaluations of {self.tokens} and {other.tokens} tokens")
        return float(np.mean(self.predictions == other.predictions))


def _read_text(path: Path) -> str:
    """A file's text; `InputError` if it is not UTF-8 text (a NUL byte or an invalid sequence)."""
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "a NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): --text takes text "
                         "files") from None


def read_texts(path: str | Path) -> list[str]:
    """The text of a file, or of every file under a directory (sorted by path; hidden ones skipped).
    Refuses a file that is not UTF-8 text, naming it."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    elif root.is_file():
        files = [root]
    else:
        raise InputError(f"{root}: no such file or directory")
    texts = [_read_text(f) for f in files]
    if not any(t.strip() for t in texts):
        raise InputError(f"{root}: no text to evaluate")
    return texts


def windows(documents: Iterable[list[int]], context: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Non-overlapping windows of at most `context` ids (≥ 2) per document, capped at `max_tokens` ids."""
    if context < 2:
        raise InputError(f"the context must be at least 2 tokens, got {context}")
    out: list[np.ndarray] = []
    left = max_tokens if max_tokens is not None else float("inf")
    for ids in documents:
        for start in range(0, len(ids), context):
            chunk = np.asarray(ids[start:start + min(context, left)], dtype=np.int64)
            if len(chunk) >= 2:
                out.append(chunk)
                left -= len(chunk)
            if left < 2:
                return out
    return out


def log_likelihood(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed negative log-likelihood of `targets` [T] under `logits` [T, V], and the argmax [T]."""
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x - peak).sum(axis=-1)) + peak[:, 0]
    nll = float(np.sum(log_z - x[np.arange(len(targets)), targets]))
    return nll, logits.argmax(axis=-1).astype(np.int64)


def score(windows_: list[np.ndarray], window_logits: Callable[[np.ndarray], np.ndarray],
          desc: str = "eval") -> tuple[float, int, np.ndarray]:
    """Sum the NLL over windows given a function from a window's ids [T] to logits [T, V]."""
    if not windows_:
        raise InputError("no window of at least 2 tokens to evaluate")
    nll, count, predictions = 0.0, 0, []
    with tqdm(total=sum(len(w) for w in windows_), desc=desc, unit="tok", leave=False, disable=None) as bar:
        for ids in windows_:  # the bar shows on a terminal only
            part, pred = log_likelihood(window_logits(ids)[:-1], ids[1:])
            nll += part
            count += len(ids) - 1
            predictions.append(pred)
            bar.update(len(ids))
    return nll, count, np.concatenate(predictions)


def evaluate(model: Model, windows_: list[np.ndarray]) -> Evaluation:
    """Run every window through a fresh sequence of `model`; count the experts its tokens chose, replay their
    routing through LRU expert caches and ones that know the future, and score the next-layer guesses
    (`locality`)."""
    routing = RoutingTrace()
    session = model.session(probe=routing)
    spec = model.spec
    usage = np.zeros((spec.n_layers, spec.routing.n_experts), dtype=np.int64) if spec.is_moe else None
    routes: list[dict[int, np.ndarray]] = []
    guesses: list[dict[int, np.ndarray]] = []

    def window_logits(ids: np.ndarray) -> np.ndarray:
        session.reset()
        routing.trace.clear()
        routing.guesses = {}
        logits = session.prefill(ids)
        if usage is not None:
            for layer, chosen in routing.trace:
                usage[layer] += np.bincount(chosen.reshape(-1), minlength=usage.shape[1])
            routes.append(dict(routing.trace))
            guesses.append(routing.guesses)
        return logits

    nll, count, predictions = score(windows_, window_logits, desc="eval bundle")
    if usage is None:
        return Evaluation(nll, count, predictions)
    hit_rates = {f: lru_hit_rate(routes, spec.routing.n_experts, f) for f in CACHED_FRACTIONS}
    ceiling = {f: optimal_hit_rate(routes, spec.routing.n_experts, f) for f in CACHED_FRACTIONS}
    return Evaluation(nll, count, predictions, usage, hit_rates, guess_recall(routes, guesses), ceiling)


def balance(usage: np.ndarray) -> np.ndarray:
    """Coefficient of variation (std / mean) of expert counts per layer; 0 is perfectly even."""
    mean = usage.mean(axis=1)
    return np.divide(usage.std(axis=1), mean, out=np.zeros_like(mean, dtype=np.float64), where=mean > 0)
