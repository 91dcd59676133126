"""`moedge`: a thin dispatcher; each subcommand's flags map to one function in `commands`."""

from __future__ import annotations

import argparse
import signal
import sys

from . import commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moedge", description="Edge inference for dense and MoE transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a checkpoint folder to a bundle", description=commands.export.__doc__)
    p.add_argument("src", help="checkpoint folder (moedge_spec.json or Hugging Face config.json)")
    p.add_argument("-o", "--out", required=True, help="bundle folder to write")
    p.add_argument("--group-size", type=int, default=None, help="int8 group size 32/64/128 (default: per channel)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--float-experts", action="store_true", help="keep experts float32 (no quantization)")
    p.add_argument("--dense-int8", action="store_true",
                   help="int8 attention/dense-FFN matrices too (onnxruntime MatMulNBits, int8 activations)")
    p.add_argument("--full-graph", action="store_true",
                   help="also write one whole-model ONNX graph computing every expert (a benchmark peer)")

    p = sub.add_parser("run", help="generate text from a prompt", description=commands.run.__doc__)
    p.add_argument("bundle")
    p.add_argument("--prompt", required=True)
    p.add_argument("-n", type=int, default=64, help="new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    p.add_argument("--expert-budget-mb", type=float, default=None,
                   help="keep at most this many MB of experts mapped (least recently used are released)")

    p = sub.add_parser("bench", help="measure decode latency, prefill, cold start, memory and the roofline",
                       description=commands.bench.__doc__)
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure (default 1 2)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="write the full report here")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw latency and breakdown")
    p.add_argument("--peers", action="store_true", help="also measure onnxruntime full-graph and PyTorch eager")
    p.add_argument("--no-cold-start", dest="cold", action="store_false",
                   help="skip the fresh-process time-to-first-token runs")

    p = sub.add_parser("inspect", help="show a bundle's spec, sizes and quantization error",
                       description=commands.inspect.__doc__)
    p.add_argument("bundle")
    p.add_argument("--verify", action="store_true", help="also check every file's sha256")

    p = sub.add_parser("eval", help="perplexity on text, agreement with the float model, expert usage",
                       description=commands.eval.__doc__)
    p.add_argument("bundle")
    p.add_argument("--text", required=True, help="a text file, or a folder of them")
    p.add_argument("--reference", default=None, metavar="CHECKPOINT",
                   help="the source checkpoint: also score its float model and compare (needs torch)")
    p.add_argument("--context", type=int, default=None, help="window length in tokens (default: the model's)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--usage", default=None, metavar="FILE.png",
                   help="write the expert-usage heatmap here, and its counts beside it as .json")
    p.add_argument("--threads", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    # SIGTERM unwinds like Ctrl-C, so an interrupted export removes its temporary folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = getattr(commands, args.pop("command"))
    try:
        command(**args)
    except KeyboardInterrupt:
        print("\nmoedge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ not in ("BundleError", "InputError", "ExportError", "SpecError") and not isinstance(
                exc, OSError):
            raise
        print(f"moedge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
