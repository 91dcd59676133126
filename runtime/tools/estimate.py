"""`moedge bench BUNDLE --estimate BOARD|all`: decode latency on boards we do not have, as an estimate.

At batch 1 a decode step reads every weight it uses once, so its floor on a board is the bytes it reads
over the board's memory bandwidth (the roofline). The expected latency scales that floor by the ratio
to the roofline `moedge bench` has just measured on this machine (our overhead over our own floor),
assuming the board's cores reach its bandwidth figure as this machine's reach its own. Each board's
figure and its public source are in `BOARDS` (and the README's "Running on a Raspberry Pi").
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1e6
CACHED_STEP_BYTES = 64 * MB  # a step this small may be served from a large last-level cache, not from memory


@dataclass(frozen=True)
class Board:
    """A board's memory bandwidth: the bus's theoretical peak and, where published, a measured read rate
    (GB/s, one core or all); `peer_gb_s`: the weights per second llama.cpp moves there, where published."""

    label: str
    peak_gb_s: float
    source: str
    measured_gb_s: float | None = None
    measured_what: str = ""
    peer_gb_s: float | None = None
    peer_source: str = ""


BOARDS = {
    "pi4": Board("Raspberry Pi 4 (BCM2711, LPDDR4-3200, 32-bit bus)", 12.8,
                 "https://magpi.raspberrypi.com/articles/raspberry-pi-4-specs-benchmarks",
                 measured_gb_s=5.56, measured_what="STREAM scale, one core: https://www.sci-pi.org.uk/bench/stream.html",
                 peer_gb_s=3.3, peer_source="llama.cpp TinyLlama-1.1B Q8_0, 3 tokens/s: https://justine.lol/matmul/"),
    "pi5": Board("Raspberry Pi 5 (BCM2712, LPDDR4X-4267, 32-bit bus)", 17.1,
                 "https://threedots.ovh/blog/2023/09/gathering-some-raspberry-pi-5-details/",
                 peer_gb_s=10.0, peer_source="llama.cpp TinyLlama-1.1B Q8_0, 9 tokens/s: https://justine.lol/matmul/"),
    "phone": Board("Snapdragon 8 Gen 2 phone (LPDDR5X-8400, 64-bit bus)", 67.2,
                   "https://wccftech.com/qualcomm-snapdragon-8-gen-2-goes-official/"),
    "laptop": Board("Apple M2 laptop (LPDDR5-6400, 128-bit bus)", 100.0,
                    "https://www.macrumors.com/2022/06/06/apple-announces-m2-chip-with-support-for-up-to-24gb-memory/"),
}


@dataclass(frozen=True)
class Estimate:
    """One board's figures for one bundle (ms per token; `expected_ms` is None without a measured ratio)."""

    board: str
    bandwidth_gb_s: float
    basis: str  # which bandwidth figure: "measured" or "peak"
    roofline_ms: float
    expected_ms: float | None
    peer_ms: float | None


def _ms(nbytes: int, gb_s: float) -> float:
    return nbytes / (gb_s * 1e9) * 1e3


def estimate(step_bytes: int, board: Board, name: str, ratio: float | None) -> Estimate:
    """The roofline of a decode step reading `step_bytes` on `board` (at its measured bandwidth where one is
    published, else its peak), times `ratio` (this machine's ratio to its roofline) for the expected latency."""
    gb_s, basis = (board.measured_gb_s, "measured") if board.measured_gb_s else (board.peak_gb_s, "peak")
    roofline = _ms(step_bytes, gb_s)
    return Estimate(name, gb_s, basis, roofline, None if ratio is None else roofline * ratio,
                    None if board.peer_gb_s is None else _ms(step_bytes, board.peer_gb_s))


def boards(name: str) -> list[str]:
    """The board names `--estimate NAME` stands for ("all": every one)."""
    return list(BOARDS) if name == "all" else [name]


def format_estimates(step_bytes: int, ratio: float | None, ratio_label: str, names: list[str]) -> str:
    """The estimate table, labelled as one, with the ratio it scales by and where it comes from."""
    lines = [f"ESTIMATE (not measured on these boards): {step_bytes / MB:.2f} MB read per decode step (weights and KV "
             "cache); "
             + (f"expected = roofline x {ratio:.2f}, this machine's ratio to roofline ({ratio_label})"
                if ratio is not None else "no ratio to roofline measured here, so no expected latency")]
    for name in names:
        e = estimate(step_bytes, BOARDS[name], name, ratio)
        line = (f"  {BOARDS[name].label}: {e.bandwidth_gb_s:.1f} GB/s ({e.basis}) -> roofline {e.roofline_ms:.3g} "
                f"ms/token ({1e3 / e.roofline_ms:.0f} tokens/s)")
        if e.expected_ms is not None:
            line += f", expected {e.expected_ms:.3g} ms/token ({1e3 / e.expected_ms:.0f} tokens/s)"
        if e.peer_ms is not None:
            line += f"; to beat: llama.cpp's {BOARDS[name].peer_gb_s:g} GB/s of weights there = {e.peer_ms:.3g} ms"
        lines.append(line)
    if step_bytes < CACHED_STEP_BYTES:
        lines.append(f"  note: a step of {step_bytes / MB:.1f} MB can stay in a CPU's caches, where no memory "
                     "roofline bounds it; the estimate is meant for models larger than the caches")
    return "\n".join(lines)
