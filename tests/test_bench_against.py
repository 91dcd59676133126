"""`moedge bench --against`: bundles decoded in turn, token by token, and the speed-up over each."""

import json
import shutil

import pytest

from helpers import run_cli, tiny_moe_spec
from moedge.runtime.errors import InputError
from moedge.runtime.tools import bench_against
from moedge.runtime.tools.bench import WARMUP_TOKENS
from moedge.runtime.tools.bench_against import _interleaved, check_against


class _Clock:
    """time.perf_counter for the module: advanced only by the fake sessions' decode steps."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def perf_counter(self):
        return self.now


class _Model:
    """A model whose every decode step takes `cost` seconds of the fake clock and is logged as (name, token)."""

    def __init__(self, name, cost, clock):
        self.name, self.cost, self.clock = name, cost, clock

    def session(self):
        model = self

        class Session:
            def prefill(self, prompt, last_only):
                pass

            def decode(self, token):
                model.clock.calls.append((model.name, token))
                model.clock.now += model.cost

        return Session()


def test_every_model_decodes_each_token_before_any_the_next_and_the_first_rotates(monkeypatch):
    import numpy as np
    from tqdm import tqdm

    clock = _Clock()
    monkeypatch.setattr(bench_against, "time", clock)
    models = [_Model("a", 1.0, clock), _Model("b", 3.0, clock), _Model("c", 2.0, clock)]
    new_tokens = WARMUP_TOKENS + 3
    latencies = _interleaved(models, 5, new_tokens, 2, np.random.default_rng(0), 100, tqdm(disable=True))
    names = [name for name, _ in clock.calls]
    assert len(names) == 2 * new_tokens * 3
    for i in range(2 * new_tokens):
        step = clock.calls[3 * i:3 * i + 3]
        assert {name for name, _ in step} == {"a", "b", "c"} and len({token for _, token in step}) == 1
        assert step[0][0] == "abc"[i % new_tokens % 3]  # the first of each token rotates
    assert [list(lat) for lat in latencies] == [[1.0] * 6, [3.0] * 6, [2.0] * 6]  # the warm-up not counted


def test_the_speed_up_is_other_over_bundle_per_token(monkeypatch, exported, tmp_path):
    """BUNDLE's decode takes 1 unit, OTHER's 3: BUNDLE is 3x as fast (not 1/3)."""
    case = exported("bench", tiny_moe_spec())
    clock = _Clock()
    monkeypatch.setattr(bench_against, "time", clock)
    costs = iter([1.0, 3.0])
    monkeypatch.setattr(bench_against.Model, "load", lambda path, threads, kv_cache: _Model(str(path), next(costs),
                                                                                           clock))
    other = tmp_path / "other.moedge"
    shutil.copytree(case.bundle, other)
    (r,) = bench_against.bench_against(case.bundle, [str(other)], [1], 4, WARMUP_TOKENS + 2, 1, 0,
                                       show_progress=False)
    assert r["speedup"] == r["speedup_of_medians"] == 3.0
    assert (r["decode_ms_median"], r["base_decode_ms_median"], r["threads"]) == (3000.0, 1000.0, 1)


def test_bundles_that_cannot_take_the_run_are_refused(exported, tmp_path):
    case = exported("bench", tiny_moe_spec())
    with pytest.raises(InputError, match="names BUNDLE or one bundle twice"):
        check_against(case.bundle, [str(case.bundle)], 4, 8)
    with pytest.raises(InputError, match="exceed .*context"):
        check_against(case.bundle, [], case.spec.max_seq_len, 1)
    result = run_cli("bench", case.bundle, "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "8", "--against",
                     tmp_path / "missing")
    assert result.returncode != 0 and "missing" in result.stderr and "Traceback" not in result.stderr


def test_bench_against_from_the_cli(exported, tmp_path):
    case = exported("bench", tiny_moe_spec())
    int4 = exported("bench-int4", tiny_moe_spec(), bits=4)
    report_path = tmp_path / "r.json"
    result = run_cli("bench", int4.bundle, "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "8",
                     "--repeat", "2", "--no-cold-start", "--against", case.bundle, "--json", report_path,
                     timeout=600)
    assert result.returncode == 0, result.stderr
    (r,) = json.loads(report_path.read_text())["against"]
    assert r["bundle"] == str(case.bundle) and r["threads"] == 1
    assert r["speedup"] > 0 and r["decode_ms_median"] > 0 and r["base_decode_ms_median"] > 0
    assert (f"against {case.bundle} (1 thread(s), decoded in turn with model.moedge): "
            f"{r['decode_ms_median']:.2f} ms/token median") in result.stdout
    assert f"model.moedge {r['speedup']:.2f}x as fast" in result.stdout
