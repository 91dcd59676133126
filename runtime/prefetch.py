"""Guessing the next MoE layer's experts from the current hidden state, to start reading them early.

A layer's router sees its post-attention RMS-normed hidden state; the residual stream changes little from
one layer to the next, so the next MoE layer's norm and router applied to this layer's output pick most of
the experts the next layer will choose (the "next layer's router" predictor of pre-gated MoE /
MoE-Infinity). While reading ahead (under an expert budget that holds two layers' experts), `forward` hands
the guess to the expert store, which starts reading the missing ones into slots on its I/O threads while the
next layer's attention computes. By default it reads ahead only while one-token steps measure faster with it
(`read_ahead_governor`): on this VM's disk the wrong guesses' reads usually cost more than the overlap hides
(README, "Running with less memory than the model").
Guessing from the state before this layer's experts are added would start the reads one expert pass
earlier, but names fewer of them (the trained sample, first 30,000 held-out tokens: 78.9% against 89.9%), and under a
memory cap the reads, not the compute, are the bottleneck. A wrong guess costs a read, never a result:
the routed experts are always the router's own, read on demand when they were not guessed.
"""

from __future__ import annotations

import numpy as np

from .bundle import Manifest
from .head import tensor_view
from .spec import ModelSpec
from .tensor_names import layer_names


class ExpertPredictor:
    """`guess(layer, hidden)`: ids [T, k] the MoE layer after `layer` will likely route hidden [T, D] to."""

    def __init__(self, spec: ModelSpec, manifest: Manifest, dense: np.ndarray):
        moe = sorted(spec.moe_layers)
        self.next = dict(zip(moe[:-1], moe[1:], strict=True))  # MoE layer → the next MoE layer
        self.k = spec.routing.top_k
        self.eps = np.float32(spec.norm_eps)
        self.norm = {j: tensor_view(dense, manifest, layer_names(j).ffn_norm) for j in self.next.values()}
        self.router = {j: tensor_view(dense, manifest, layer_names(j).router) for j in self.next.values()}

    def target(self, layer: int) -> int | None:
        """The MoE layer whose experts a guess at `layer` is for (None after the last one)."""
        return self.next.get(layer)

    def guess(self, layer: int, hidden: np.ndarray) -> np.ndarray:
        """The k experts with the largest next-layer router logits for each row of hidden [T, D]."""
        j = self.next[layer]
        scale = 1.0 / np.sqrt(np.mean(np.square(hidden), axis=-1, keepdims=True) + self.eps)
        logits = (hidden * scale * self.norm[j]) @ self.router[j].T  # [T, E]; softmax/sigmoid keep the order
        return np.argpartition(-logits, self.k - 1, axis=-1)[:, :self.k]
