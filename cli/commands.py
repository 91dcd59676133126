"""The functions behind `moedge` subcommands; each flag is one keyword argument."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from .options import require


def export(src: str, out: str, group_size: int | None = None, bits: int = 8, force: bool = False,
           float_experts: bool = False, full_graph: bool = False, float_dense: bool = False,
           int8_budget: float = 0.0, calibration: str | None = None, dense_bits: int | None = None,
           head_bits: int | None = None) -> None:
    """Export a checkpoint folder (moedge or Hugging Face) or a GGUF file to a bundle."""
    require("torch", "onnx", "safetensors", purpose="moedge export")
    from moedge.exporter import export as export_bundle  # torch is only needed here

    manifest = export_bundle(src, out, group_size=group_size, bits=bits, force=force, float_experts=float_experts,
                             full_graph=full_graph, float_dense=float_dense, int8_fraction=int8_budget,
                             calibration=calibration, dense_bits=dense_bits, head_bits=head_bits)
    sizes = manifest.files
    experts = sizes.get(manifest.experts.file, {}).get("size", 0) if manifest.experts else 0
    dense = sum(v["size"] for k, v in sizes.items() if k.endswith((".bin", ".onnx"))) - experts
    print(f"wrote {out}: dense {dense / 1e6:.1f} MB, experts {experts / 1e6:.1f} MB ({manifest.quant_scheme}; "
          f"dense linears {manifest.dense_linears}; LM head {manifest.head_stored})")


def _load(bundle: str, threads: int | None, expert_budget_mb: float | None, verify: bool, quiet: bool,
          compile_now: bool = True, read_ahead: str = "auto", kv_cache: str | None = None):
    """`Model.load` for a command (`read_ahead`: a `READ_AHEAD_MODES` name; `kv_cache`: its dtype); its notes (a
    memory budget, a first compile) on stderr unless `quiet`. With `compile_now`, the kernels numba's cache lacks
    are compiled here (see `_compile_kernels`)."""
    from moedge.runtime import Model
    from moedge.runtime.read_ahead_governor import READ_AHEAD_MODES

    budget = None if expert_budget_mb is None else int(expert_budget_mb * 1e6)
    model = Model.load(bundle, threads=threads, expert_budget=budget, verify=verify,
                       read_ahead=READ_AHEAD_MODES[read_ahead], kv_cache=kv_cache)
    if model.budget_note and not quiet:
        print(f"moedge: {model.budget_note}", file=sys.stderr)
    if read_ahead == "on" and not model.weights.may_read_ahead and not quiet:
        why = ("the experts fit in memory: every one stays once read" if model.experts is None or
               model.experts.budget_bytes is None else "the expert budget holds fewer than two layers' experts")
        print(f"moedge: warning: --read-ahead on has no effect: {why}", file=sys.stderr)
    if compile_now:
        _compile_kernels(model, quiet)
    return model


def _compile_kernels(model, quiet: bool, long_prompts: bool = True) -> None:
    """Compile the kernel calls of this model's runs that numba's cache lacks (`long_prompts`: also the one of
    prompts of `PREFILL_GEMM_MIN_TOKENS` tokens or more), all before the first token, saying so on one line
    unless `quiet`."""
    from moedge.runtime.jit_cache import compile_apart, missing
    from moedge.runtime.kernel_calls import model_calls

    uncompiled = missing(model_calls(model.weights, long_prompts))
    if not uncompiled:
        return
    if not quiet:
        print("moedge: compiling the kernels for this CPU (first run after an install or update; `moedge warmup` "
              "compiles them ahead) ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    compile_apart(uncompiled)
    if not quiet:
        print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _prompt_ids(model, text: str | None, ids: list[int] | None, chat: bool, n: int) -> list[int]:
    """The prompt's token ids, checked against the vocabulary and, with `n` new tokens, the context."""
    from moedge.runtime import InputError
    from moedge.runtime.chat import chat_prompt
    from moedge.runtime.inputs import check_tokens

    if ids is not None:
        try:
            ids = check_tokens(ids, model.spec.vocab_size).tolist()
        except InputError as exc:
            raise InputError(f"--ids: {exc}") from None
    elif chat:
        ids = chat_prompt(model, [{"role": "user", "content": text}])
    else:
        ids = model.encode(text)
    if not ids:
        raise InputError("the prompt is empty")
    if len(ids) + n > model.spec.max_seq_len:
        raise InputError(f"-n {n}: the prompt's {len(ids)} tokens plus {n} new tokens exceed the model's context "
                         f"of {model.spec.max_seq_len} tokens")
    return ids


def _read_prompt(prompt: str | None, file: str | None) -> str | None:
    """The prompt text: `--prompt TEXT`, `--prompt -` (stdin) or `--file FILE`."""
    from moedge.runtime import InputError

    if prompt == "-":
        return sys.stdin.read()
    if file is None:
        return prompt
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--file {file}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"--file {file}: {exc.strerror or exc}") from None


def run(bundle: str, prompt: str | None = None, file: str | None = None, ids: list[int] | None = None, n: int = 64,
        temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
        threads: int | None = None, chat: bool = False, expert_budget_mb: float | None = None, verify: bool = True,
        quiet: bool = False, stop: list[str] | None = None, read_ahead: str = "auto",
        kv_cache: str | None = None) -> None:
    """Generate text from a prompt (with `chat`: a user message in the chat template): the generated text alone
    on stdout as it comes (token ids for a bundle without a tokenizer), ending before the first `stop` string;
    then latency and expert usage on stderr."""
    from moedge.runtime import InputError
    from moedge.runtime.moe import PREFILL_GEMM_MIN_TOKENS
    from moedge.runtime.stop_strings import StopStrings

    if chat and ids is not None:
        raise InputError("--chat takes a text prompt, not --ids")
    unused = [flag for flag, given in (("--top-k", top_k != 0), ("--top-p", top_p != 1.0), ("--seed", seed is not None))
              if given]
    if temperature == 0.0 and unused and not quiet:
        print(f"moedge: warning: {', '.join(unused)} have no effect at --temperature 0 (greedy decoding)",
              file=sys.stderr)
    stops = StopStrings(stop or ())
    text = _read_prompt(prompt, file)
    t0 = time.perf_counter()
    model = _load(bundle, threads, expert_budget_mb, verify, quiet, compile_now=False, read_ahead=read_ahead,
                  kv_cache=kv_cache)
    if stop and model.tokenizer is None:
        raise InputError("--stop needs a bundle with a tokenizer (this one prints token ids)")
    inputs = _prompt_ids(model, text, ids, chat, n)
    loaded = time.perf_counter()
    _compile_kernels(model, quiet, long_prompts=len(inputs) >= PREFILL_GEMM_MIN_TOKENS)  # what this run calls
    stamps = [time.perf_counter()]
    for token in model.generate(inputs, max_new_tokens=n, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed):
        stamps.append(time.perf_counter())
        sys.stdout.write(stops.feed(token.text) if model.tokenizer is not None else f"{token.id} ")
        sys.stdout.flush()
        if stops.matched is not None:
            break
    print(stops.flush())
    if not quiet:
        _report_run(model, loaded - t0, stamps, stops.matched)


def _report_run(model, load_s: float, stamps: list[float], stopped_at: str | None = None) -> None:
    """Latency and expert usage of a `run`, on stderr."""
    line = f"load {1e3 * load_s:.0f} ms, {len(stamps) - 1} tokens"
    if stopped_at is not None:
        line += f" (ended at the stop string {stopped_at!r})"
    if len(stamps) > 1:
        line += f", first token {1e3 * (stamps[1] - stamps[0]):.0f} ms (prefill included)"
    if len(stamps) > 2:
        ms = float(np.median(np.diff(stamps[1:]))) * 1e3
        line += f", decode {ms:.2f} ms/token (median), {1e3 / ms:.1f} tokens/s"
    print(line, file=sys.stderr)
    store = model.experts
    if store is not None:
        total = store.touched.size - (store.offsets < 0).sum()
        released = f"; {store.releases} released under the budget" if store.budget_bytes is not None else ""
        if store.read_aheads:
            released += f"; {store.read_aheads} read ahead ({100 * store.guess_recall:.0f}% of the guesses routed to)"
        print(f"experts touched: {store.first_touches} of {total} "
              f"({store.bytes_touched / 1e6:.1f} MB of {store.file_bytes / 1e6:.1f} MB){released}", file=sys.stderr)


def chat(bundle: str, system: str | None = None, n: int = 512, temperature: float = 0.8, top_k: int = 40,
         top_p: float = 0.95, seed: int | None = None, threads: int | None = None,
         expert_budget_mb: float | None = None, verify: bool = True, read_ahead: str = "auto",
         kv_cache: str | None = None) -> None:
    """Chat with a bundle in the terminal through its chat template (plain continuation without one); the
    history stays in the session's KV cache. /reset forgets it, /exit leaves, Ctrl-C stops a reply."""
    from moedge.runtime.conversation import Conversation

    from .chat_loop import chat_loop

    model = _load(bundle, threads, expert_budget_mb, verify, quiet=False, read_ahead=read_ahead, kv_cache=kv_cache)
    chat_loop(Conversation(model, system, n, temperature, top_k, top_p, seed))


def serve(bundle: str, host: str = "127.0.0.1", port: int = 8080, queue: int = 8, name: str | None = None,
          threads: int | None = None, expert_budget_mb: float | None = None, verify: bool = True,
          read_ahead: str = "auto", kv_cache: str | None = None) -> None:
    """Serve a bundle over HTTP with OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions),
    one request at a time, until Ctrl-C."""
    require("starlette", "uvicorn", "sse_starlette", purpose="moedge serve")
    from moedge.server import listen
    from moedge.server import serve as serve_http

    sock = listen(host, port)
    try:
        model = _load(bundle, threads, expert_budget_mb, verify, quiet=False, read_ahead=read_ahead,
                      kv_cache=kv_cache)
        serve_http(model, sock, name or Path(bundle).resolve().name.removesuffix(".moedge"), queue)
    finally:
        sock.close()


def _weights(bundle: str, threads: int | None, kv_cache: str | None):
    """A bundle's loaded weights, for the kernel calls its runs make."""
    from moedge.runtime import Model

    return Model.load(bundle, threads=threads, kv_cache=kv_cache).weights


def warmup(bundles: list[str], threads: int | None = None, quiet: bool = False, kv_cache: str | None = None) -> None:
    """Compile the numba kernels into numba's cache ahead of a first run (`make setup` does): those of every kind
    of bundle `moedge export` writes, or with BUNDLEs only those their runs call (at `threads` threads, with a KV
    cache of `kv_cache`, by default each bundle's default)."""
    from moedge.runtime import InputError
    from moedge.runtime.jit_cache import compile_calls, missing
    from moedge.runtime.kernel_calls import model_calls, unique
    from moedge.runtime.numba_cache import kernel_cache_dir
    from moedge.runtime.warmup import install_calls

    if kv_cache and not bundles:
        raise InputError("--kv-cache needs BUNDLEs (without, every kind of bundle is compiled with its default cache)")
    if not bundles and _measure_row_prefetch(quiet):
        return
    calls = unique([c for b in bundles for c in model_calls(_weights(b, threads, kv_cache))]) if bundles \
        else install_calls()
    todo = missing(calls)
    start = time.perf_counter()
    compile_calls(todo, show_progress=not quiet)
    if not quiet:
        print(f"compiled {len(todo)} kernel specialisations in {time.perf_counter() - start:.1f} s "
              f"({len(calls) - len(todo)} of {len(calls)} were cached) into {kernel_cache_dir()}")


def _measure_row_prefetch(quiet: bool) -> bool:
    """Measure the row dots' prefetch distances on this CPU once (`runtime.row_prefetch`); when they differ from
    the ones this process's kernels were set up with, compile every kind in a fresh process, and say True."""
    import subprocess

    from moedge.runtime import MoedgeError
    from moedge.runtime.numba_cache import ROW_PREFETCH, cache_base
    from moedge.runtime.row_prefetch import ENV, calibrate, measured, probe

    if os.environ.get(ENV) or measured(cache_base()) is not None:
        return False
    if not quiet:
        print("measuring how far ahead the row dots should ask for memory on this CPU (once, ~30 s):")
    try:
        choice = calibrate(cache_base(), probe,
                           progress=(lambda line: None) if quiet else (lambda line: print(" ", line)))
    except (RuntimeError, OSError, ValueError) as exc:  # the probe failed (e.g. no memory for its matrices)
        print(f"moedge: could not measure them ({exc}); the kernels keep the default distances", file=sys.stderr)
        return False
    if not quiet:
        print(f"  kept: int8 rows {choice.int8} bytes ahead, int4 rows {choice.int4} "
              f"(in {cache_base()}/row-prefetch.json)")
    if choice == ROW_PREFETCH:
        return False
    argv = ["warmup", *(["-q"] if quiet else [])]
    script = f"from moedge.cli.main import main; raise SystemExit(main({argv!r}))"
    child = subprocess.run([sys.executable, "-c", script])
    if child.returncode:
        raise MoedgeError(f"compiling the kernels in a fresh process failed (exit status {child.returncode})")
    return True


def inspect(bundle: str, verify: bool = False) -> None:
    """Print a bundle's format, spec, tokenizer and chat template, bos/eos, graph and file sizes, how each part is
    stored (scheme and bits per weight) and the experts' quantization error per layer."""
    from moedge.runtime.bundle import read_manifest
    from moedge.runtime.storage import storage
    from moedge.runtime.verify import verify_bundle

    from .describe import graphs_line, human_size, text_lines

    manifest = read_manifest(bundle)
    spec = manifest.spec
    print(text_lines(bundle, manifest)[0])
    print(f"model: {spec.n_layers} layers ({spec.layer_kinds.count('moe')} MoE), hidden {spec.hidden_size}, "
          f"heads {spec.n_heads}/{spec.n_kv_heads}, head dim {spec.head_dim}, vocab {spec.vocab_size}, "
          f"context {spec.max_seq_len}")
    if spec.routing:
        r = spec.routing
        print(f"routing: {r.n_experts} experts of {spec.expert_intermediate_size}, top-{r.top_k}, "
              f"{r.score_func}, normalize={r.normalize_top_k}, shared={r.shared_expert_size}")
    print(*text_lines(bundle, manifest)[1:], graphs_line(manifest), "files:", sep="\n")
    for name, info in sorted(manifest.files.items()):
        print(f"  {name:24s} {human_size(info['size']):>10s}")
    print(f"total: {human_size(sum(info['size'] for info in manifest.files.values()))}; stored as:")
    for part in storage(manifest):
        print(f"  {part.name:26s} {part.stored:18s} {part.bits_per_weight:6.2f} bits/weight, "
              f"{part.weights / 1e6:8.2f} M weights, {part.nbytes / 1e6:8.2f} MB")
    if manifest.experts:
        x = manifest.experts
        counts = {s: sum(layer.count(s) for layer in x.schemes.values()) for s in x.layouts}
        print(f"experts: {manifest.quant_scheme}, group {x.group_size or 'per-channel'}; "
              + ", ".join(f"{n} {s} of {x.layouts[s].span_bytes} bytes" for s, n in counts.items()))
        for layer, err in sorted(manifest.quant_report.get("layers", {}).items(), key=lambda kv: int(kv[0])):
            print(f"  layer {int(layer):3d}: max abs {err['max_abs']:.2e}, rel frobenius ≤ {err['rel_fro_max']:.2e}, "
                  f"cosine ≥ {err['cosine_min']:.6f}")
    if verify:
        for line in verify_bundle(bundle):
            print(f"checksums: {line}")


def bench(bundle: str, threads: list[int], prompt_tokens: int = 128, new_tokens: int = 64, repeat: int = 3,
          seed: int = 0, json_path: str | None = None, plot: str | None = None, peers: list[str] | None = None,
          cold: bool = True, memory_limit: int | None = None, estimate: str | None = None,
          kv_cache: str | None = None, against: list[str] | None = None) -> None:
    """Benchmark a bundle: decode latency vs the memory-bandwidth roofline, prefill, cold start, memory;
    with `estimate`, also the estimated latency on that board (or all) from the paired ratio to roofline
    measured here; with `against`, its speed-up over other bundles decoded in turn with it."""
    import json

    if plot:
        require("matplotlib", purpose="bench --plot")
    if peers is not None:
        require("torch", "onnx", purpose="bench --peers")
    from moedge.runtime.tools.bench import bench as run_bench
    from moedge.runtime.tools.bench_against import bench_against, check_against
    from moedge.runtime.tools.bench_report import format_report

    if against:
        check_against(bundle, against, prompt_tokens, new_tokens)  # before the long part
    report = run_bench(bundle, threads, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeat=repeat,
                       seed=seed, cold=cold, memory_limit=memory_limit, kv_cache=kv_cache)
    if against:
        report["against"] = bench_against(bundle, against, threads, prompt_tokens, new_tokens, repeat, seed,
                                          kv_cache)
    if peers is not None:
        from moedge.exporter.peers import measure_peers  # needs torch/onnx: export side

        report["peers"] = measure_peers(bundle, threads, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                                        seed=seed, ours=report, names=peers or None)
    print(format_report(report))
    if estimate:
        from moedge.runtime.tools.estimate import boards, format_estimates

        first = report["results"][0]  # the paired run's ratio: its tokens start from swept caches, as on a board
        print(format_estimates(report["bytes_per_decode_step"]["total"], first["paired"]["ratio_to_roofline"],
                               f"paired, {first['threads']} thread(s), measured just now", boards(estimate)))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    if plot:
        from moedge.runtime.tools.bench_plot import plot_bench

        plot_bench(report, plot)


def eval(bundle: str, text: str, reference: str | None = None, context: int | None = None,
         max_tokens: int | None = None, usage: str | None = None, threads: int | None = None,
         verify: bool = True, kv_cache: str | None = None) -> None:
    """Perplexity of a bundle on a text file or folder; compare with the float checkpoint (moedge or Hugging Face
    folder); expert usage."""
    from moedge.runtime import InputError, Model
    from moedge.runtime.tools.evaluate import evaluate, read_texts, windows

    if reference:
        require("torch", "safetensors", purpose="eval --reference")
    if usage:
        require("matplotlib", purpose="eval --usage")
    texts = read_texts(text)
    source = _open_reference(reference) if reference else None  # a bad reference fails before the work
    model = Model.load(bundle, threads=threads, verify=verify, kv_cache=kv_cache)
    context = context or model.spec.max_seq_len
    if not 2 <= context <= model.spec.max_seq_len:
        raise InputError(f"--context must be in [2, {model.spec.max_seq_len}], got {context}")
    if usage and not model.spec.is_moe:
        raise InputError("--usage needs an MoE bundle")
    docs = [model.encode(t) for t in texts]
    if source is not None:
        _check_reference(source, reference, model.spec, texts, docs)
    chunks = windows(docs, context, max_tokens)
    result = evaluate(model, chunks)
    print(f"{text}: {result.tokens} tokens evaluated in {len(chunks)} windows of ≤ {context}, "
          f"perplexity {result.perplexity:.4f} ({model.weights.kv_dtype} KV cache)")
    if source is not None:
        from moedge.exporter.reference import evaluate_reference

        ref = evaluate_reference(source, chunks)
        change = result.perplexity / ref.perplexity - 1
        print(f"reference {reference}: perplexity {ref.perplexity:.4f}; bundle vs reference {100 * change:+.3f}%, "
              f"top-1 agreement {100 * result.agreement(ref):.2f}%")
    if result.usage is not None:
        _report_usage(model, result.usage, usage, f"{Path(bundle).name} on {Path(text).name}")
        rates = ", ".join(f"{100 * f:.0f}% cached: {100 * r:.1f}% (at most {100 * result.optimal_hit_rates[f]:.1f}%)"
                          for f, r in result.cache_hit_rates.items())
        print(f"expert cache on this text (LRU, that share of each layer's experts cached), hit rate: {rates}; "
              "at most: a cache that knew which experts come next")
        if result.guess_recall is not None:
            print(f"read-ahead: the next layer's router on the current state names {100 * result.guess_recall:.1f}% "
                  "of the experts routed to")


def _open_reference(reference: str):
    """The reference checkpoint opened for scoring (`eval --reference`), or an error naming the option."""
    from moedge.exporter.source import open_source
    from moedge.runtime import MoedgeError

    try:
        return open_source(reference)
    except MoedgeError as exc:
        raise type(exc)(f"--reference: {exc}") from None


def _check_reference(source, reference: str, spec, texts: list[str], docs: list[list[int]]) -> None:
    """Refuse a reference that tokenizes differently or cannot read the ids; warn when its shape differs."""
    from moedge.exporter.reference import reference_tokenizer, shape_differences
    from moedge.runtime import InputError

    if [e.ids for e in reference_tokenizer(source).encode_batch(texts)] != docs:
        raise InputError(f"--reference {reference}: its tokenizer differs from the bundle's")
    top = max((max(d) for d in docs if d), default=0)
    if top >= source.spec.vocab_size:
        raise InputError(f"--reference {reference}: its vocabulary of {source.spec.vocab_size} lacks token {top}")
    diffs = shape_differences(source.spec, spec)
    if diffs:
        print(f"moedge: warning: the reference differs from the bundle ({', '.join(diffs)}): the comparison is "
              "between different models", file=sys.stderr)


def _report_usage(model, counts: np.ndarray, image: str | None, title: str) -> None:
    """Print each MoE layer's expert shares and balance; write the heatmap and its JSON if asked."""
    import json

    from moedge.runtime.tools.evaluate import balance

    layers = list(model.spec.moe_layers)
    counts = counts[layers]
    cv = balance(counts)
    print("expert usage (% of routed slots; cv = std/mean of counts, 0 is even):")
    for layer, row, c in zip(layers, counts, cv, strict=True):
        shares = " ".join(f"{100 * n / max(row.sum(), 1):4.1f}" for n in row)
        print(f"  layer {layer:3d}: cv {c:.3f} | {shares}")
    if image:
        from .plots import usage_heatmap

        usage_heatmap(counts, layers, cv, image, title)
        data = {"title": title, "layers": {str(i): {"counts": row.tolist(), "cv": float(c)}
                                           for i, row, c in zip(layers, counts, cv, strict=True)}}
        Path(image).with_suffix(".json").write_text(json.dumps(data, indent=1))
        print(f"wrote {image} and {Path(image).with_suffix('.json')}")
