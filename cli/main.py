"""`moedge`: a thin dispatcher; each subcommand's flags map to one function in `commands`."""

from __future__ import annotations

import argparse
import signal
import sys

from moedge.runtime.errors import MoedgeError
from moedge.runtime.kv_cache import KV_DTYPES
from moedge.runtime.read_ahead_governor import READ_AHEAD_MODES
from moedge.runtime.tools.bench import PEERS, WARMUP_TOKENS
from moedge.runtime.tools.estimate import BOARDS

from . import commands
from .options import integer, number, output_file, size, token_ids
from .output import tracked_stdout

BUNDLE_HELP = "the bundle folder (written by moedge export)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one `moedge: error:` line (exit 2)."""

    def error(self, message: str):
        command = self.prog.removeprefix("moedge").strip()
        self.exit(2, f"moedge: error: {command + ': ' if command else ''}{message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from moedge.runtime.bundle import FORMAT_VERSION

    try:
        number_ = version("moedge")
    except PackageNotFoundError:
        number_ = "(not installed)"
    return f"moedge {number_} (bundle format {FORMAT_VERSION})"


def _generation_options(p: argparse.ArgumentParser, temperature: float, top_k: int, top_p: float) -> None:
    """The sampling and loading flags of `run` and `chat` (with their own sampling defaults)."""
    p.add_argument("--temperature", type=number(0.0), default=temperature,
                   help=f"0 means greedy (default {temperature:g})")
    p.add_argument("--top-k", type=integer(0), default=top_k,
                   help=f"sample among the k likeliest (default {top_k}; 0: all)")
    p.add_argument("--top-p", type=number(0.0, 1.0, lo_open=True), default=top_p,
                   help=f"nucleus sampling (default {top_p:g})")
    p.add_argument("--seed", type=integer(0), default=None, help="seed of the sampler (default: random)")
    _loading_options(p)


def _loading_options(p: argparse.ArgumentParser) -> None:
    """How `run`, `chat` and `serve` load the model."""
    p.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="default: the CPU count (1 for a model whose decode step reads under 16 MB)")
    p.add_argument("--expert-budget-mb", type=number(0.0), default=None,
                   help="keep at most this many MB of experts in memory (read again when released; default: as "
                        "the memory available allows)")
    p.add_argument("--read-ahead", choices=READ_AHEAD_MODES, default="auto",
                   help="under an expert budget, read the experts the next layer is guessed to route to ahead: "
                        "auto (default: while it measures faster), on, off")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the checksums (dense files at load, each expert on first use)")
    _kv_cache_option(p)


def _kv_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache", choices=KV_DTYPES, default=None,
                   help="the KV cache's dtype (default: float16 beside quantized dense linears, else float32)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moedge", description="Edge inference for dense and MoE transformers.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("export", help="export a checkpoint folder or GGUF file to a bundle",
                       description=commands.export.__doc__)
    p.add_argument("src", help="checkpoint folder (moedge_spec.json or Hugging Face config.json) or a .gguf file")
    p.add_argument("-o", "--out", required=True, help="bundle folder to write")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=None,
                   help="scales per group of 32/64/128 inputs (default: per channel for int8, 32 for int4)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=8, help="expert weights int8 (default) or int4")
    p.add_argument("--dense-bits", type=int, choices=(4, 8), default=None,
                   help="with --bits 4: the attention/dense-FFN matrices and the LM head at 4 bits, in the same groups "
                        "as the experts, or int8 (default: 8)")
    p.add_argument("--head-bits", type=int, choices=(4, 8), default=None,
                   help="the LM head int8 or (with --bits 4) int4, whatever --dense-bits says (default: as the dense "
                        "linears)")
    p.add_argument("--int8-budget", type=number(0.0, 1.0), default=0.0, metavar="FRACTION",
                   help="with --bits 4: keep this share of the experts int8, those int4 hurts most (default 0)")
    p.add_argument("--calibration", metavar="TEXT_FILE",
                   help="text that --int8-budget measures the experts on (default: a random token stream)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (and nothing but a bundle)")
    p.add_argument("--float-experts", action="store_true", help="keep every weight float32 (no quantization)")
    p.add_argument("--float-dense", action="store_true",
                   help="keep the attention/dense-FFN matrices float32 (default: int8 like the experts)")
    p.add_argument("--full-graph", action="store_true",
                   help="also write one whole-model ONNX graph computing every expert (a benchmark peer)")

    p = sub.add_parser("run", help="generate text from a prompt", description=commands.run.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text; '-' reads it from stdin")
    source.add_argument("-f", "--file", help="read the prompt from this UTF-8 text file")
    source.add_argument("--ids", type=token_ids, metavar="1,2,3",
                        help="the prompt as token ids (for a bundle without a tokenizer: ids are printed too)")
    p.add_argument("-n", type=integer(0), default=64, help="new tokens (default 64)")
    _generation_options(p, temperature=0.0, top_k=0, top_p=1.0)
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    p.add_argument("-q", "--quiet", action="store_true", help="print the generated text only (no notes, no statistics)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the text before this string (repeatable)")

    p = sub.add_parser("chat", help="chat in the terminal (history kept in the KV cache)",
                       description=commands.chat.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--system", default=None, help="a system message (plain continuation: text before the chat)")
    p.add_argument("-n", type=integer(1), default=512, help="most tokens per reply (default 512)")
    _generation_options(p, temperature=0.8, top_k=40, top_p=0.95)

    p = sub.add_parser("serve", help="answer OpenAI-style HTTP requests (/v1/completions, /v1/chat/completions)",
                       description=commands.serve.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=integer(0, 65535), default=8080, help="default 8080; 0 picks a free port")
    p.add_argument("--queue", type=integer(0, 10000), default=8,
                   help="requests that may wait while one runs; more are answered 503 (default 8)")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the bundle folder's name)")
    _loading_options(p)

    p = sub.add_parser("bench", help="measure decode latency, prefill, cold start, memory and the roofline",
                       description=commands.bench.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--threads", type=integer(1, 1024), nargs="+", default=[1, 2],
                   help="thread counts to measure (default: 1 2)")
    p.add_argument("--prompt-tokens", type=integer(1), default=128, help="prompt length in tokens (default 128)")
    p.add_argument("--new-tokens", type=integer(WARMUP_TOKENS + 1), default=64,
                   help=f"decoded tokens per run (the first {WARMUP_TOKENS} are warm-up)")
    p.add_argument("--repeat", type=integer(1), default=3, help="runs per thread count (default 3)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the random token stream (default 0)")
    p.add_argument("--json", dest="json_path", type=output_file(), default=None, metavar="FILE",
                   help="write the full report here as JSON (checked before the run)")
    p.add_argument("--plot", type=output_file(".png"), default=None, metavar="FILE.png",
                   help="draw latency and breakdown here (needs matplotlib; checked before the run)")
    p.add_argument("--memory-limit", type=size, default=None, metavar="SIZE",
                   help="also decode inside a memory cgroup of SIZE (e.g. 1G; needs root), beside an uncapped run")
    _kv_cache_option(p)
    p.add_argument("--peers", nargs="*", choices=PEERS, default=None, metavar="PEER",
                   help=f"also measure these peers on the same weights ({', '.join(PEERS)}; none named: all)")
    p.add_argument("--no-cold-start", dest="cold", action="store_false",
                   help="skip the fresh-process time-to-first-token runs")
    p.add_argument("--against", nargs="+", default=None, metavar="OTHER",
                   help="also decode these bundles in turn with BUNDLE, token by token in one process (--repeat "
                        "runs at each --threads count), and report BUNDLE's speed-up over each")
    p.add_argument("--estimate", choices=[*BOARDS, "all"], default=None, metavar="BOARD",
                   help=f"also estimate decode latency on a board we do not have ({', '.join(BOARDS)} or all): its "
                        "roofline, times the paired run's ratio to roofline measured here at the first --threads count")

    p = sub.add_parser("warmup", help="compile the kernels ahead of a first run (make setup does)",
                       description=commands.warmup.__doc__)
    p.add_argument("bundles", nargs="*", metavar="BUNDLE",
                   help="compile only what these bundles' runs call (default: every kind moedge export writes)")
    p.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="with BUNDLEs: the thread count they will run at (default: as moedge run chooses)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    _kv_cache_option(p)

    p = sub.add_parser("inspect", help="show a bundle's spec, sizes and quantization error",
                       description=commands.inspect.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--verify", action="store_true",
                   help="also check every checksum: the files a load reads and every expert span")

    p = sub.add_parser("eval", help="perplexity on text, agreement with the float model, expert usage",
                       description=commands.eval.__doc__)
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--text", required=True, help="a UTF-8 text file, or a folder of them")
    p.add_argument("--reference", default=None, metavar="CHECKPOINT",
                   help="the source checkpoint (moedge or Hugging Face folder): also score its float model and "
                        "compare (needs torch)")
    p.add_argument("--context", type=integer(2), default=None, help="window length in tokens (default: the model's)")
    p.add_argument("--max-tokens", type=integer(1), default=None, help="evaluate only the first N tokens")
    p.add_argument("--usage", type=output_file(".png", companion=".json"), default=None, metavar="FILE.png",
                   help="write the expert-usage heatmap here, and its counts beside it as .json")
    p.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="default: the CPU count (1 for a model whose decode step reads under 16 MB)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the checksums")
    _kv_cache_option(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    # SIGTERM unwinds like Ctrl-C, so an interrupted export removes its temporary folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = getattr(commands, args.pop("command"))
    with tracked_stdout() as stdout:
        try:
            command(**args)
        except KeyboardInterrupt:
            stdout.end_line()
            print("moedge: interrupted", file=sys.stderr)
            return 130
        except (MoedgeError, OSError) as exc:
            stdout.end_line()
            print(f"moedge: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
