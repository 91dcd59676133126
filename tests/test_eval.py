"""Evaluation: the shipped trained MoE on a held-out slice (trained vs untrained, int8 vs float),
the windowing and likelihood helpers, and `moedge eval` end to end."""

import json
import re

import numpy as np
import pytest
import torch

from helpers import ROOT, run_cli, sample_module, tiny_dense_spec
from moedge.exporter import export
from moedge.exporter.checkpoint import read_checkpoint, save_checkpoint
from moedge.exporter.model import Transformer
from moedge.exporter.reference import evaluate_reference, reference_tokenizer
from moedge.runtime import Model
from moedge.runtime.tools.evaluate import balance, evaluate, log_likelihood, windows

SHIPPED = ROOT / "samples" / "default-moe"
SLICE_TOKENS = 1024
corpus = sample_module("corpus")


@pytest.fixture(scope="module")
def heldout_text():
    return [text for _, text in corpus.split(corpus.documents())[1]]


@pytest.fixture(scope="module")
def heldout_slice(heldout_text):
    """The first SLICE_TOKENS held-out tokens, in windows of the model's context."""
    docs = [e.ids for e in reference_tokenizer(SHIPPED).encode_batch(heldout_text[:4])]
    return windows(docs, 256, SLICE_TOKENS)


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("shipped") / "default.moedge"
    export(SHIPPED, bundle, show_progress=False)  # int8 per output channel, the default
    return bundle


@pytest.fixture(scope="module")
def float_reference(heldout_slice):
    return evaluate_reference(SHIPPED, heldout_slice)


def test_trained_model_beats_an_untrained_one_by_far(float_reference, heldout_slice, tmp_path):
    torch.manual_seed(0)
    untrained = save_checkpoint(Transformer(read_checkpoint(SHIPPED).spec), tmp_path / "untrained")
    baseline = evaluate_reference(untrained, heldout_slice)
    assert float_reference.tokens == SLICE_TOKENS - len(heldout_slice)
    assert float_reference.perplexity < baseline.perplexity / 10, (float_reference.perplexity, baseline.perplexity)


def test_int8_bundle_is_within_bound_of_float(shipped_bundle, float_reference, heldout_slice):
    result = evaluate(Model.load(shipped_bundle, threads=1), heldout_slice)
    assert abs(result.perplexity / float_reference.perplexity - 1) < 0.003
    assert result.agreement(float_reference) > 0.98
    assert result.usage.sum() == SLICE_TOKENS * 2 * 4  # every token routed to 2 experts in 4 layers


def test_windows_do_not_overlap_or_cross_documents():
    out = windows([list(range(10)), [7], list(range(5))], context=4, max_tokens=None)
    assert [w.tolist() for w in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]
    capped = windows([list(range(10))], context=4, max_tokens=6)
    assert [w.tolist() for w in capped] == [[0, 1, 2, 3], [4, 5]]


def test_log_likelihood_matches_a_direct_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 11)).astype(np.float32) * 4
    targets = rng.integers(0, 11, size=5)
    nll, pred = log_likelihood(logits, targets)
    expected = -torch.log_softmax(torch.from_numpy(logits).double(), -1)[torch.arange(5), targets].sum()
    assert nll == pytest.approx(float(expected), rel=1e-9)
    assert pred.tolist() == logits.argmax(-1).tolist()


def test_balance_is_zero_when_even_and_grows_with_skew():
    cv = balance(np.array([[5, 5, 5, 5], [10, 0, 5, 5], [0, 0, 0, 0]]))
    assert cv[0] == 0 and cv[1] == pytest.approx(np.std([10, 0, 5, 5]) / 5) and cv[2] == 0


def test_eval_cli_reports_perplexity_agreement_and_usage(shipped_bundle, heldout_text, tmp_path):
    text = tmp_path / "slice.txt"
    text.write_text(heldout_text[0][:3000])
    image = tmp_path / "usage.png"
    result = run_cli("eval", shipped_bundle, "--text", text, "--reference", SHIPPED, "--usage", image,
                    "--threads", "1", "--kv-cache", "float32")  # the int8 bundle's default is float16
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "tokens evaluated" in out and "top-1 agreement" in out and "layer   3: cv" in out
    assert "(float32 KV cache)" in out
    rates = [float(r) for r in re.findall(r"\d+% cached: ([\d.]+)%", out)]
    assert len(rates) == 3 and rates == sorted(rates) and rates[-1] > 0  # more cached, more hits
    ceilings = [float(r) for r in re.findall(r"\(at most ([\d.]+)%\)", out)]
    assert len(ceilings) == 3 and all(c >= r for c, r in zip(ceilings, rates, strict=True))
    assert re.search(r"names [\d.]+% of the experts routed to", out)
    usage = json.loads(image.with_suffix(".json").read_text())
    assert image.stat().st_size > 0 and sorted(usage["layers"]) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("args, message", [
    (["--text", "/nonexistent.txt"], "no such file or directory"),
    (["--text", "/dev/null", "--context", "1"], "argument --context: must be a whole number >= 2"),
])
def test_eval_bad_input_is_one_line_error(shipped_bundle, args, message):
    result = run_cli("eval", shipped_bundle, *args)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_eval_usage_on_a_dense_bundle_is_an_error(exported, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("x")
    result = run_cli("eval", exported("dense", tiny_dense_spec()).bundle, "--text", text, "--usage", tmp_path / "u.png")
    assert result.returncode == 2 and "--usage needs an MoE bundle" in result.stderr


def test_eval_refuses_input_that_is_not_text(shipped_bundle, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("def f(x):\n    return x\n")
    (tmp_path / "docs" / ".hidden").write_bytes(b"\0\1\2")  # hidden files are skipped
    assert run_cli("eval", shipped_bundle, "--text", tmp_path / "docs").returncode == 0
    (tmp_path / "docs" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    for path in (tmp_path / "docs", tmp_path / "docs" / "logo.png"):
        result = run_cli("eval", shipped_bundle, "--text", path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(f"moedge: error: {tmp_path / 'docs' / 'logo.png'} is not UTF-8 text (")


def test_eval_shows_a_progress_bar_on_a_terminal(shipped_bundle, heldout_text, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    text = tmp_path / "slice.txt"
    text.write_text(heldout_text[0][:6000])
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    result = run_cli("eval", shipped_bundle, "--text", text, "--threads", "1", stderr=follower, env=env)
    os.close(follower)
    shown = os.read(leader, 1 << 16).decode()
    os.close(leader)
    assert result.returncode == 0 and "perplexity" in result.stdout
    assert "eval bundle: 100%" in shown and "tok/s" in shown, shown


def test_eval_reference_can_be_a_hugging_face_folder(chat_bundle, tmp_path):
    from hf_tiny import WORDS

    bundle = chat_bundle[0]
    text = tmp_path / "words.txt"
    text.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(0, 700, 3)))
    hf = bundle.parent / "hf"
    result = run_cli("eval", bundle, "--text", text, "--reference", hf, "--threads", "1")
    assert result.returncode == 0, result.stderr
    model = Model.load(bundle, threads=1)
    chunks = windows([model.encode(text.read_text())], model.spec.max_seq_len)
    ref = evaluate_reference(hf, chunks)
    assert f"reference {hf}: perplexity {ref.perplexity:.4f}" in result.stdout
    agreement = float(result.stdout.split("top-1 agreement ")[1].split("%")[0])
    assert agreement > 95  # int8 LM head against the float model
    assert "warning" not in result.stderr


def test_eval_reference_is_checked_before_the_work_and_differences_are_named(shipped_bundle, chat_bundle, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("import os\nprint(os.getcwd())\n")
    missing = run_cli("eval", shipped_bundle, "--text", text, "--reference", tmp_path / "nowhere")
    assert missing.returncode == 2 and missing.stderr == f"moedge: error: --reference: {tmp_path / 'nowhere'} is " \
        "neither a folder (a checkpoint) nor a GGUF file\n" and missing.stdout == ""
    other_tokenizer = run_cli("eval", shipped_bundle, "--text", text, "--reference", chat_bundle[0].parent / "hf")
    assert other_tokenizer.returncode == 2 and "its tokenizer differs from the bundle's" in other_tokenizer.stderr
    dense = run_cli("eval", shipped_bundle, "--text", text, "--reference", ROOT / "samples" / "dense")
    assert dense.returncode == 0, dense.stderr
    assert dense.stderr.startswith("moedge: warning: the reference differs from the bundle (layer_kinds ")
    assert "experts 0 vs 8" in dense.stderr


def test_shape_differences_name_vocabulary_and_shape():
    from helpers import tiny_dense_spec, tiny_moe_spec
    from moedge.exporter.reference import shape_differences

    assert shape_differences(tiny_moe_spec(), tiny_moe_spec()) == []
    assert shape_differences(tiny_moe_spec(vocab_size=300), tiny_moe_spec()) == ["vocab_size 300 vs 203"]
    diffs = shape_differences(tiny_dense_spec(), tiny_moe_spec())
    assert "n_layers 3 vs 4" in diffs and "experts 0 vs 8" in diffs
