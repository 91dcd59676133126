"""Sampling and streaming generation: greedy, top-k/top-p, seeds, stop strings and EOS."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from fuzz_bundles import edit_manifest
from helpers import tiny_moe_spec
from moedge.runtime import InputError, Model
from moedge.runtime.generate import sample

ROOT_DEFAULT = Path(__file__).resolve().parents[1] / "samples" / "default-moe"


def test_sample_greedy_top_k_and_top_p():
    logits = np.array([0.0, 3.0, 2.9, -1.0], np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, rng) == 1  # temperature 0: argmax
    assert {sample(logits, rng, temperature=1.0, top_k=1) for _ in range(20)} == {1}
    assert {sample(logits, rng, temperature=1.0, top_p=0.01) for _ in range(20)} == {1}
    two = {sample(logits, rng, temperature=1.0, top_k=2) for _ in range(200)}
    assert two == {1, 2}  # only the two best, both drawn
    draws = [sample(logits, np.random.default_rng(7), temperature=0.8) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed draws the same token


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from moedge.exporter import export

    out = tmp_path_factory.mktemp("generate") / "default.moedge"
    export(ROOT_DEFAULT, out, show_progress=False)
    return Model.load(out, threads=1)


def test_streamed_text_joins_to_the_decoded_ids(model):
    tokens = list(model.generate("def __init__(self", max_new_tokens=24, temperature=0.7, top_k=40, seed=3))
    assert len(tokens) == 24
    assert "".join(t.text for t in tokens) == model.decode_text([t.id for t in tokens])
    again = [t.id for t in model.generate("def __init__(self", max_new_tokens=24, temperature=0.7, top_k=40, seed=3)]
    assert again == [t.id for t in tokens]


def test_stop_string_and_eos_end_generation(model):
    free = "".join(t.text for t in model.generate("def f(x):\n", max_new_tokens=40))
    stop = free.strip()[:2]
    stopped = "".join(t.text for t in model.generate("def f(x):\n", max_new_tokens=40, stop=[stop]))
    assert stop in stopped and len(stopped) < len(free)


def test_generation_ends_at_eos(exported, tmp_path):
    """A bundle whose EOS is the 5th greedy token stops after 4 tokens (and never yields the EOS)."""
    case = exported("eos", tiny_moe_spec())
    free = [t.id for t in Model.load(case.bundle).generate([1, 2, 3], max_new_tokens=12)]
    eos = free[4]
    assert eos not in free[:4]
    bundle = tmp_path / "eos.moedge"
    shutil.copytree(case.bundle, bundle)
    edit_manifest(bundle, lambda d: d["generation"].update(eos_token_id=[eos]))
    assert [t.id for t in Model.load(bundle).generate([1, 2, 3], max_new_tokens=12)] == free[:4]


def test_bad_sampling_arguments(model):
    with pytest.raises(InputError, match="top_p"):
        list(model.generate("x", top_p=0.0))
    with pytest.raises(InputError, match="temperature"):
        list(model.generate("x", temperature=-1.0))
