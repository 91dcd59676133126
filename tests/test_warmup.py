"""Cold start: the kernel calls a run makes are the ones `model_calls` lists, `moedge warmup` compiles those of
every kind of bundle the exporter writes, and a run after it compiles nothing."""

import os

import numpy as np
import pytest

from helpers import build_model, run_cli, tiny_dense_spec, tiny_moe_spec
from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.runtime import Model, decode_step, dense_decode, expert_store, half, kernels, moe, routing
from moedge.runtime.forward import Probe
from moedge.runtime.jit_cache import missing
from moedge.runtime.kernel_calls import argument_type, model_calls
from moedge.runtime.warmup import install_calls

# Every combination of `moedge export` flags that changes a kernel's argument types.
KINDS = {"int8": ("moe", {}), "int4": ("moe", {"bits": 4}), "mixed": ("moe", {"bits": 4, "int8_fraction": 0.25}),
         "float": ("moe", {"float_experts": True}), "float-dense": ("moe", {"float_dense": True}),
         "int4-dense4": ("moe", {"bits": 4, "dense_bits": 4}),
         "dense": ("dense", {}), "dense-float": ("dense", {"float_dense": True})}
ENTRY_POINTS = [(routing, "_route"), (expert_store, "_count"), (expert_store, "_guess"),
                (expert_store, "_release_order"), (kernels, "moe_decode"), (kernels, "moe_decode_parallel"),
                (kernels, "moe_decode_from"),
                (kernels, "expert_pairs"), (kernels, "dequantize"), (kernels, "norm_linear"),
                (dense_decode, "decode_layer"), (decode_step, "decode_layers"), (decode_step, "_list_of"),
                (decode_step, "_append"), (half, "to_float32")]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """kind -> a bundle of the tiny MoE or dense model exported with that kind's flags."""
    root = tmp_path_factory.mktemp("warmup")
    checkpoints = {"moe": save_checkpoint(build_model(tiny_moe_spec()), root / "moe"),
                   "dense": save_checkpoint(build_model(tiny_dense_spec()), root / "dense")}
    for kind, (model, flags) in KINDS.items():
        export(checkpoints[model], root / f"{kind}.moedge", show_progress=False, **flags)
    return {kind: root / f"{kind}.moedge" for kind in KINDS}


class Recorder:
    """Stands in for a kernel: records the argument types of each call, then calls it."""

    def __init__(self, kernel, calls: set):
        self.kernel, self.calls, self.py_func = kernel, calls, kernel.py_func

    def __call__(self, *args):
        self.calls.add((self.py_func.__name__, tuple(argument_type(a) for a in args)))
        return self.kernel(*args)

    def compile(self, args):
        """The kernel's specialisation for argument types `args`, recorded as a call (what `DecodeLayers` calls)."""
        self.calls.add((self.py_func.__name__, args))
        return self.kernel.compile(args)


def recorded_run(bundle, monkeypatch, **load) -> tuple[Model, set]:
    """A model whose every kernel call from Python is recorded as (name, argument types), after a run of every
    path: a long prompt (experts shared by 16 tokens or more, the GEMM threshold lowered to that: a tiny model's
    context is shorter than the default), a short one, decode steps (in one call; part by part, as under a probe)."""
    calls: set = set()
    monkeypatch.setattr(moe, "PREFILL_GEMM_MIN_TOKENS", 16)
    for module, name in ENTRY_POINTS:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name), calls))
    model = Model.load(bundle, **load)
    session = model.session()
    session.prefill(np.arange(80) % 50)
    session.reset()
    session.prefill([3, 1, 4])
    for token in (1, 5, 9):
        session.decode(token)
    model.session(probe=Probe()).decode(2)
    monkeypatch.undo()
    return model, calls


def named(calls) -> set:
    return {(call.name, call.args) for call in calls}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_model_calls_are_the_calls_a_run_makes_and_warmup_compiles_them(bundles, kind, threads, monkeypatch):
    model, calls = recorded_run(bundles[kind], monkeypatch, threads=threads)
    listed = named(model_calls(model.weights))
    assert calls == listed
    assert listed <= named(install_calls()), f"{kind} at {threads} threads: moedge warmup leaves these out"


@pytest.mark.parametrize(("threads", "decode"), [(1, "moe_decode_from"), (2, "moe_decode_parallel")])
def test_budget_and_parallel_calls_are_listed_too(bundles, monkeypatch, threads, decode):
    """Under an expert budget with reading ahead: one thread goes on expert by expert as reads land, more
    spread the k experts over the threads."""
    monkeypatch.setattr("moedge.runtime.moe.PARALLEL_MIN_BYTES", 0)
    model, calls = recorded_run(bundles["int8"], monkeypatch, threads=threads, expert_budget=10**9, read_ahead=True)
    listed = named(model_calls(model.weights))
    assert {"_release_order", "_guess", decode} <= {name for name, _ in calls}
    assert calls == listed and listed <= named(install_calls())


def test_one_thread_compiles_no_parallel_gemv(bundles):
    """At one thread the dense decode kernel is a specialisation of its own, without the parallel GEMV."""
    one, two = (model_calls(Model.load(bundles["int8"], threads=n).weights) for n in (1, 2))
    decode = [[c for c in calls if c.name == "decode_layer"] for calls in (one, two)]
    assert len(decode[0]) == len(decode[1]) == 1 and decode[0] != decode[1]
    config = decode[0][0].args[2]
    assert config.types[config.fields.index("parallel_min")] == argument_type(None)


def test_a_run_after_warmup_compiles_nothing(bundles, tmp_path):
    """In a fresh numba cache: `moedge warmup BUNDLE` compiles what a run of it needs, then a run compiles
    nothing (numba saves no machine code) and prints no compile notice; without the warmup it would."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_DEBUG_CACHE": "1"}
    bundle = bundles["int8"]
    warmed = run_cli("warmup", bundle, "--threads", "1", env=env)
    assert warmed.returncode == 0, warmed.stderr
    assert "compiled 15 kernel specialisations" in warmed.stdout and "(0 of 15 were cached)" in warmed.stdout
    ran = run_cli("run", bundle, "--ids", "1,2,3", "-n", "4", "--threads", "1", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "[cache] data loaded" in ran.stdout and "[cache] data saved" not in ran.stdout
    assert "compiling the kernels" not in ran.stderr
    again = run_cli("warmup", bundle, "--threads", "1", env=env)
    assert "compiled 0 kernel specialisations" in again.stdout and "(15 of 15 were cached)" in again.stdout


def test_a_first_run_compiles_apart_and_loads_from_the_cache(bundles, tmp_path):
    """With an empty cache, `moedge run` compiles in a child process and then loads the machine code from the
    cache, as every later run does (a kernel compiled in the process that runs it can round differently): this
    process saves nothing to the cache, only loads."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_DEBUG_CACHE": "1"}
    ran = run_cli("run", bundles["int8"], "--ids", "1,2,3", "-n", "4", "--threads", "1", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "compiling the kernels" in ran.stderr
    assert "[cache] data loaded" in ran.stdout and "[cache] data saved" not in ran.stdout


def test_compiling_apart_falls_back_to_this_process(bundles, monkeypatch):
    """If the child cannot compile, the calls compile here."""
    from moedge.runtime import jit_cache

    compiled = []
    monkeypatch.setattr(jit_cache.sys, "executable", "false")
    monkeypatch.setattr(jit_cache, "compile_calls", compiled.append)
    calls = model_calls(Model.load(bundles["int8"], threads=1).weights)
    jit_cache.compile_apart(calls)
    assert compiled == [calls]


def test_a_first_run_says_it_compiles_what_it_calls_before_the_first_token(bundles, monkeypatch, capsys):
    from moedge.cli.main import main
    from moedge.runtime import jit_cache
    from moedge.runtime.session import Session

    events = []
    monkeypatch.setattr(moe, "PREFILL_GEMM_MIN_TOKENS", 16)  # a tiny model's context is shorter than the default
    prefill = Session.prefill
    monkeypatch.setattr(Session, "prefill", lambda self, *a, **k: events.append("prefill") or prefill(self, *a, **k))
    monkeypatch.setattr(jit_cache, "missing", list)  # as if numba's cache were empty
    monkeypatch.setattr(jit_cache, "compile_apart", lambda calls: events.append({c.name for c in calls}))
    bundle = str(bundles["int8"])
    assert main(["run", bundle, "--ids", "1,2", "-n", "2", "--threads", "1"]) == 0
    assert main(["run", bundle, "--ids", ",".join(["3"] * 16), "-n", "2", "--threads", "1"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "compil" in line]
    assert len(notes) == 2 and all(n.startswith("moedge: compiling the kernels for this CPU") for n in notes)
    assert all(n.endswith(" s") for n in notes)  # how long it took, on the same line
    short = {"norm_linear", "decode_layer", "_route", "_count", "moe_decode", "expert_pairs", "decode_layers",
             "_list_of", "_append", "to_float32"}
    assert events == [short, "prefill", short | {"dequantize"}, "prefill"]  # a long prompt's kernel only for one
    monkeypatch.setattr(jit_cache, "missing", lambda calls: [])
    assert main(["run", bundle, "--ids", "1,2", "-n", "2"]) == 0
    assert "compiling" not in capsys.readouterr().err


def test_missing_reads_numbas_index(bundles, monkeypatch):
    from numba.core.caching import IndexDataCacheFile

    calls = model_calls(Model.load(bundles["int8"], threads=1).weights)
    for call in calls:
        call.kernel.compile(call.args)  # compiled or loaded: in numba's cache on disk either way
    assert missing(calls) == []
    monkeypatch.setattr(IndexDataCacheFile, "_load_index", lambda self: {})  # an empty (or stale) cache
    assert missing(calls) == calls


def test_warmup_compiles_the_kv_cache_a_run_will_have(bundles, monkeypatch, capsys):
    """`moedge warmup BUNDLE --kv-cache float32` compiles the dense decode kernels over a float32 cache (the int8
    bundle's default is float16); without BUNDLEs the flag is refused in one line."""
    from moedge.cli.main import main
    from moedge.runtime import jit_cache

    compiled = []
    monkeypatch.setattr(jit_cache, "compile_calls", lambda calls, show_progress: compiled.extend(calls))
    monkeypatch.setattr(jit_cache, "missing", list)
    caches = {}
    for dtype in ("float32", None):
        compiled.clear()
        flag = ["--kv-cache", dtype] if dtype else []
        assert main(["warmup", str(bundles["int8"]), "--threads", "1", "-q", *flag]) == 0
        caches[dtype] = {str(c.args[3].dtype) for c in compiled if c.name == "decode_layer"}
    assert caches == {"float32": {"float32"}, None: {"uint16"}}
    assert main(["warmup", "--kv-cache", "float32"]) == 2
    assert "--kv-cache needs BUNDLEs" in capsys.readouterr().err
