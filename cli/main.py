"""`moedge`: a thin dispatcher; each subcommand's flags map to one function in `commands`."""

from __future__ import annotations

import argparse
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

    p = sub.add_parser("run", help="generate text from a prompt", description=commands.run.__doc__)
    p.add_argument("bundle")
    p.add_argument("--prompt", required=True)
    p.add_argument("-n", type=int, default=64, help="new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("inspect", help="show a bundle's spec, sizes and quantization error",
                       description=commands.inspect.__doc__)
    p.add_argument("bundle")
    p.add_argument("--verify", action="store_true", help="also check every file's sha256")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
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
