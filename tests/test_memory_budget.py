"""The budget that follows the machine: reading the cgroup limit and MemAvailable, and Model.load setting an
expert budget (and saying so) only when the experts do not fit."""

import numpy as np
import pytest

from helpers import PAGE, mapped_bytes, resident_bytes, tiny_moe_spec
from moedge.runtime import InputError, Model
from moedge.runtime.kv_cache import KVCache
from moedge.runtime.memory import RESERVE, Available, anonymous_bytes, automatic_budget, available_memory
from moedge.runtime.storage import step_bytes


def _fake_system(tmp_path, cgroup_line, files, meminfo_kb=8_000_000):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    (proc / "meminfo").write_text(f"MemTotal: 16000000 kB\nMemAvailable: {meminfo_kb} kB\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root, proc


@pytest.mark.parametrize(("line", "files", "want"), [
    ("4:memory:/box", {"memory/box/memory.limit_in_bytes": "1073741824",
                       "memory/box/memory.usage_in_bytes": "73741824"}, 1_000_000_000),  # v1
    ("0::/box", {"box/memory.max": "2000000000", "box/memory.current": "500000000"}, 1_500_000_000),  # v2
    ("0::/box", {"box/memory.max": "max", "box/memory.current": "5"}, 8_000_000 * 1024),  # v2 without a limit
    ("4:memory:/", {"memory/memory.limit_in_bytes": "9223372036854771712"}, 8_000_000 * 1024),  # v1 "no limit"
])
def test_available_memory_reads_the_cgroup_then_meminfo(tmp_path, line, files, want):
    root, proc = _fake_system(tmp_path, line, files)
    got = available_memory(root, proc)
    assert got.bytes == want and ("cgroup" in got.source) == (want < 8_000_000 * 1024)


def test_automatic_budget_only_when_experts_do_not_fit():
    available = Available(RESERVE + 1000, "test")
    assert automatic_budget(experts_bytes=600, resident_bytes=400, available=available) is None
    assert automatic_budget(experts_bytes=601, resident_bytes=400, available=available) == 600
    assert automatic_budget(experts_bytes=601, resident_bytes=2000, available=available) == 0


def test_load_sets_a_budget_when_the_experts_do_not_fit(exported, monkeypatch):
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    manifest = Model.load(case.bundle, threads=1).manifest
    assert Model.load(case.bundle, threads=1).budget_note is None  # this machine holds them easily
    experts = manifest.files[manifest.experts.file]["size"]
    resident = step_bytes(manifest)["dense"]  # the KV cache is not reserved ahead: the budget follows it
    room = RESERVE + resident + experts // 2
    monkeypatch.setattr("moedge.runtime.model.available_memory", lambda: Available(room, "a test's limit"))
    model = Model.load(case.bundle, threads=1)
    assert model.experts.budget_bytes == experts // 2
    assert "do not fit" in model.budget_note and "a test's limit" in model.budget_note
    session = model.session()  # it still runs, releasing experts as it goes
    for t in np.random.default_rng(0).integers(0, 200, 40):
        session.decode(int(t))
    assert model.experts.releases > 0
    assert Model.load(case.bundle, threads=1, expert_budget=10**9).budget_note is None  # the user's budget wins


def test_an_automatic_budget_gives_the_kv_cache_its_room(exported, monkeypatch):
    """The budget set for the machine shrinks by the bytes the live sessions' KV caches have grown into (down
    to one layer's top-k experts); the mapped experts stay within it after every step, the logits unchanged.
    A budget the user gave stays as given. (The process's anonymous memory is held still here: its growth
    beyond the KV caches is the next test's.)"""
    monkeypatch.setattr("moedge.runtime.weights.anonymous_bytes", lambda: 0)
    monkeypatch.setattr("moedge.runtime.weights.RUNTIME_GROWTH", 0)  # no growth left room for: the KV cache's counts
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    manifest = Model.load(case.bundle, threads=1).manifest
    experts = manifest.files[manifest.experts.file]["size"]
    per_token = 8 * manifest.spec.n_layers * manifest.spec.n_kv_heads * manifest.spec.head_dim
    budget = experts // 2
    room = RESERVE + step_bytes(manifest)["dense"] + budget
    monkeypatch.setattr("moedge.runtime.model.available_memory", lambda: Available(room, "a test's limit"))
    model = Model.load(case.bundle, threads=1)
    store = model.experts
    tokens = np.random.default_rng(1).integers(0, 200, 60).tolist()
    session, reference = model.session(), Model.load(case.bundle, threads=1, expert_budget=10**9).session()
    other = model.session()
    other.prefill(tokens[:8])  # a second live session counts too
    for n, t in enumerate(tokens, start=1):
        np.testing.assert_array_equal(session.decode(t), reference.decode(t))
        assert store.current_budget == max(budget - (n + 8) * per_token, store.floor_bytes)
        assert store.spans[store.mapped].sum() <= store.current_budget
    session.reset()  # the pages written stay held
    assert store.current_budget == max(budget - (len(tokens) + 8) * per_token, store.floor_bytes)
    del other
    assert store.current_budget == max(budget - len(tokens) * per_token, store.floor_bytes)
    given = Model.load(case.bundle, threads=1, expert_budget=budget)
    given.session().prefill(tokens)
    assert given.experts.current_budget == budget


def test_an_automatic_budget_follows_the_runtimes_own_growth(exported, monkeypatch):
    """Memory the process takes after load beyond its KV caches and the experts' slots (numba's code, retained
    scratch) comes off the budget set for the machine as it grows, and goes back to it when freed; the experts
    held, and the slots' resident pages, stay within the budget, and the logits are unchanged."""
    grown, stores = [0], []  # the runtime's growth; the store, whose slots statm counts as anonymous too
    monkeypatch.setattr("moedge.runtime.weights.anonymous_bytes",
                        lambda: 10**9 + grown[0] + (stores[0].slot_bytes_held if stores else 0))
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    manifest = Model.load(case.bundle, threads=1).manifest
    budget = manifest.files[manifest.experts.file]["size"] // 2
    prepaid = budget // 6  # the growth the budget left room for at load (`memory.RUNTIME_GROWTH`)
    monkeypatch.setattr("moedge.runtime.weights.RUNTIME_GROWTH", prepaid)
    room = RESERVE + step_bytes(manifest)["dense"] + budget
    monkeypatch.setattr("moedge.runtime.model.available_memory", lambda: Available(room, "a test's limit"))
    model = Model.load(case.bundle, threads=1)
    store = model.experts
    stores.append(store)
    session, reference = model.session(), Model.load(case.bundle, threads=1, expert_budget=10**9).session()
    for step, t in enumerate(np.random.default_rng(2).integers(0, 200, 45)):
        grown[0] = budget // 3 if 15 <= step < 30 else 0  # the experts fill the budget; it grows, is freed
        np.testing.assert_array_equal(session.decode(int(t)), reference.decode(int(t)))
        kv = model.weights.kv_bytes()
        assert store.current_budget == max(budget - max(max(kv, grown[0]) - prepaid, 0), store.floor_bytes)
        assert store.spans[store.mapped].sum() <= store.current_budget
        assert mapped_bytes(store) <= store.current_budget  # the slots given up leave memory too
    assert budget // 3 > model.weights.kv_bytes()  # the growth, not the KV cache, set the budget while it lasted


def test_too_little_memory_for_one_layers_experts_is_refused(exported, monkeypatch):
    """Where the room left beside the dense weights and the runtime is below the experts one layer needs at once,
    loading says so instead of running into the out-of-memory killer; a budget given by hand still loads."""
    monkeypatch.setattr("moedge.runtime.weights.anonymous_bytes", lambda: 0)  # whatever this test process compiles
    case = exported("budget", tiny_moe_spec(expert_intermediate_size=256))
    model = Model.load(case.bundle, threads=1)
    floor = model.experts.floor_bytes
    room = RESERVE + step_bytes(model.manifest)["dense"] + floor - 1
    monkeypatch.setattr("moedge.runtime.model.available_memory", lambda: Available(room, "a test's limit"))
    with pytest.raises(InputError, match=r"not enough memory for this model: .* below the .* MB one layer needs"):
        Model.load(case.bundle, threads=1)
    assert Model.load(case.bundle, threads=1, expert_budget=floor).experts.budget_bytes == floor
    monkeypatch.setattr("moedge.runtime.model.available_memory", lambda: Available(room + 1, "a test's limit"))
    assert Model.load(case.bundle, threads=1).experts.budget_bytes == floor


def test_anonymous_bytes_counts_what_the_process_allocates(tmp_path):
    """statm's resident minus file-backed pages: grows by an array written, 0 without /proc."""
    before = anonymous_bytes()
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MB, every page written
    assert anonymous_bytes() - before >= 60 << 20
    del block
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_text("1000 700 200 5 0 300 0\n")
    assert anonymous_bytes(tmp_path) == 500 * PAGE
    assert anonymous_bytes(tmp_path / "none") == 0


def test_under_a_budget_a_prompts_freed_heap_goes_back(exported, monkeypatch):
    """After each prompt pass under an expert budget (not after one-token steps, not without a budget) the C
    heap's free pages go back to the system; glibc has the call, and it gives back what was freed."""
    import ctypes

    from moedge.runtime import memory

    calls = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)
    bundle = exported("api", tiny_moe_spec()).bundle
    capped = Model.load(bundle, threads=1, expert_budget=10**6).session()
    capped.prefill(list(range(40)))
    assert calls == [0]
    capped.decode(3)
    assert calls == [0]
    Model.load(bundle, threads=1).session().prefill(list(range(40)))
    assert calls == [0]
    monkeypatch.undo()
    assert memory._MALLOC_TRIM is not None  # glibc
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    blocks = [libc.malloc(100_000) for _ in range(300)]  # 30 MB under glibc's mmap threshold: on the heap
    for block in blocks:
        ctypes.memset(block, 1, 100_000)
    top = max(blocks)  # kept: the others' free space is then not the heap's top, which free() trims itself
    for block in blocks:
        if block != top:
            libc.free(ctypes.c_void_p(block))
    held = anonymous_bytes()
    memory.release_free_heap()
    assert held - anonymous_bytes() >= 20 << 20
    libc.free(ctypes.c_void_p(top))


def test_kv_cache_rows_hold_only_their_pages():
    """A long context's cache holds the pages of the rows written, not 2 MB per layer: numpy would have asked for
    transparent huge pages for arrays this large (196 MB for one granite-1b-shape session after 128 tokens)."""
    spec = tiny_moe_spec(max_seq_len=4096, n_kv_heads=8, head_dim=64)  # 8 MB of keys per layer
    cache = KVCache(spec)
    rows = 3
    cache.reserve(rows)
    for layer in range(spec.n_layers):
        new = np.ones((rows, spec.n_kv_heads, spec.head_dim), np.float32)
        cache.write(layer, new, new)
    cache.commit(rows)
    written = spec.n_layers * -(-cache.k[:, :rows].nbytes // spec.n_layers // PAGE) * PAGE  # whole pages a layer
    for part in (cache.k, cache.v):
        assert resident_bytes(part.ctypes.data, part.nbytes) <= written
    assert cache.held_bytes == 2 * cache.k[:, :rows].nbytes
    np.testing.assert_array_equal(cache.past(2)[0], 1.0)
