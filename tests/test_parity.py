"""Runtime vs the PyTorch fp32 reference (experts replaced by their int8 or int4 round trip).

With float32 expert activations (`activations="float"`), every path — float, int8 or int4
experts, decode or prefill — differs from its reference by float32 rounding only (measured ≤ 5e-7 of
the logit range), so one bound holds them all: 1e-5 of the range. A 100× wrong final-norm epsilon or a
flipped bias fails it (checked when the bound was set). The default, int8 activations, is checked
against the same reference with the same activation quantization (`helpers.with_int8_activations`).
"""

import numpy as np
import pytest
import torch

from helpers import tiny_dense_spec, tiny_moe_spec, with_int8_activations
from moedge.runtime import Model, moe, session

PROMPT = [5, 17, 99, 3, 150, 42, 7, 7, 201, 0, 64, 128]
TOLERANCE = 1e-5  # of the logit range
FLIP = 3e-3  # of the logit range: one activation's int8 code rounded the other way (see below)
EXACT = {"activations": "float"}  # float32 activations: the runtime is exact up to rounding
FLOAT = "float"  # experts left unquantized
INT4 = {"moe_int4": (tiny_moe_spec(), 32), "moe_fullnorm_mha_top1_int4_g64": (
    tiny_moe_spec(qk_norm="full", n_kv_heads=4, expert_intermediate_size=128, routing=dict(top_k=1)), 64)}
CASES = {
    **INT4,
    "moe": (tiny_moe_spec(), None),
    "moe_g32": (tiny_moe_spec(), 32),
    "moe_float": (tiny_moe_spec(), FLOAT),
    "dense": (tiny_dense_spec(), None),
    "moe_shared_gated_sigmoid": (tiny_moe_spec(routing=dict(score_func="sigmoid", normalize_top_k=False,
                                                            shared_expert_size=48, shared_expert_gate=True)), None),
    "moe_mixed_scaled": (tiny_moe_spec(layer_kinds=("dense", "moe", "dense", "moe"), tie_embeddings=True,
                                       embedding_multiplier=2.0, residual_multiplier=0.5, attention_scale=0.1,
                                       logits_divisor=4.0, routing=dict(top_k=3, shared_expert_size=32,
                                                                        scaling_factor=1.5)), None),
    "dense_headnorm_bias": (tiny_dense_spec(qk_norm="head", attention_bias=True, head_dim=24, n_kv_heads=2,
                                            tie_embeddings=False), None),
    "moe_fullnorm_mha_top1": (tiny_moe_spec(qk_norm="full", n_kv_heads=4, expert_intermediate_size=128,
                                            routing=dict(top_k=1)), 64),
}


def reference_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0].numpy()


def reference_greedy(model, prompt, steps):
    cache, tokens, out = model.new_cache(), torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(tokens, cache)[0, -1].argmax())
            out.append(nxt)
            tokens = torch.tensor([[nxt]])
    return out


@pytest.fixture(params=list(CASES))
def case(request, exported):
    spec, group = CASES[request.param]
    if group == FLOAT:
        return exported(request.param, spec, float_experts=True)
    return exported(request.param, spec, group, bits=4 if request.param in INT4 else 8)


@pytest.mark.parametrize(("length", "gemm_from", "chunk"), [(len(PROMPT), None, None), (90, 16, None), (90, None, 32)])
def test_prefill_logits_match_reference(case, length, gemm_from, chunk, monkeypatch):
    """`gemm_from`: experts with that many of the prompt's tokens take the dequantize + BLAS path (the
    default threshold needs more tokens than a tiny model's context holds), the others `expert_pairs`.
    `chunk`: the prompt goes through in passes of that many tokens (`session.PREFILL_CHUNK`), the last shorter."""
    if gemm_from is not None:
        monkeypatch.setattr(moe, "PREFILL_GEMM_MIN_TOKENS", gemm_from)
    if chunk is not None:
        monkeypatch.setattr(session, "PREFILL_CHUNK", chunk)
    tokens = (PROMPT * 8)[:length]
    model = Model.load(case.bundle, threads=2, **EXACT)
    got = model.session().prefill(tokens)
    ref = reference_logits(case.reference, tokens)
    assert got.shape == (length, case.spec.vocab_size)
    assert np.abs(got - ref).max() <= TOLERANCE * (ref.max() - ref.min())


def test_greedy_decode_matches_reference(case):
    model = Model.load(case.bundle, threads=1, **EXACT)
    got = [t.id for t in model.generate(PROMPT, max_new_tokens=32)]
    assert got == reference_greedy(case.reference, PROMPT, 32)


def test_int8_activations_match_reference_with_the_same_quantization(case):
    """The default kernels against PyTorch with the same activation quantization: float32 rounding only
    (measured ≤ 2e-7 of the range; the quantization itself moves the logits ~5e-3). Rounding can move an
    activation across a code boundary (one code step, ~1% of its block's largest value): over a 90-token
    prompt's ~46k quantized activations that happened once or twice (≤ 2e-3 of the range), and once on this
    12-token prompt when the summation order of the dots changed (moe_int4, token 1: 1.6e-3). Such a flip
    moves the logits of the one token whose activation flipped, by at most `FLIP`; a wrong kernel moves
    every token's. So every token but at most one is within `TOLERANCE`, that one within `FLIP`. Float32
    experts keep float activations."""
    reference = case.reference if case.float_experts else with_int8_activations(case.reference)
    got = Model.load(case.bundle, threads=2).session().prefill(PROMPT)
    ref = reference_logits(reference, PROMPT)
    assert_tokens_match(got, ref, ref.max() - ref.min())


def assert_tokens_match(got: np.ndarray, want: np.ndarray, scale: float) -> None:
    """Logits [T, V] equal to rounding on every token but at most one, which may differ by one flipped
    activation code (see above; two paths whose float32 rounding differs can flip one)."""
    per_token = np.abs(got - want).max(axis=-1) / scale
    assert np.sum(per_token > TOLERANCE) <= 1 and per_token.max() <= FLIP, per_token


def test_decode_step_by_step_equals_prefill(case):
    model = Model.load(case.bundle, threads=2)
    full = model.session().prefill(PROMPT)
    session = model.session()
    stepped = np.stack([session.decode(t) for t in PROMPT])
    scale = full.max() - full.min()
    assert_tokens_match(stepped, full, scale)
    # a prefill after a prefill continues the same sequence
    split = model.session()
    split.prefill(PROMPT[:5])
    assert_tokens_match(split.prefill(PROMPT[5:]), full[5:], scale)


def test_numba_decode_equals_the_onnx_graphs(case):
    """One-token steps run in numba; the layer graphs (decode="onnx") are the reference."""
    fast, reference = (Model.load(case.bundle, threads=1, decode=path).session() for path in ("numba", "onnx"))
    fast.prefill(PROMPT[:4])
    want = reference.prefill(PROMPT[:4])
    scale = want.max() - want.min()
    steps = PROMPT[4:] * 4  # 36 steps: past a page of cache rows, every expert path
    assert_tokens_match(np.stack([fast.decode(t) for t in steps]), np.stack([reference.decode(t) for t in steps]),
                        scale)


@pytest.mark.parametrize("kv_cache", ["float32", "float16"])
def test_two_threads_split_a_long_attention_and_equal_one(exported, kv_cache):
    """From `ATTEND_SPLIT_ROWS` cached rows on, two threads attend to half of the rows each and combine their
    partial sums: the logits equal one thread's to float32 rounding."""
    from moedge.runtime.dense_decode import ATTEND_SPLIT_ROWS

    bundle = exported("moe", tiny_moe_spec()).bundle
    prompt = [(7 * i) % 200 for i in range(70)]
    steps = PROMPT * 2
    assert len(prompt) >= ATTEND_SPLIT_ROWS and len(prompt) + len(steps) <= tiny_moe_spec().max_seq_len
    got = {}
    for threads in (1, 2):
        session = Model.load(bundle, threads=threads, kv_cache=kv_cache, **EXACT).session()
        session.prefill(prompt)
        got[threads] = np.stack([session.decode(t) for t in steps])
    assert np.abs(got[2] - got[1]).max() <= TOLERANCE * (got[1].max() - got[1].min())
