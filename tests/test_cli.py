"""The CLI end to end, through subprocesses: export → inspect → run, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def moedge(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "moedge.cli.main", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"moedge {args} failed:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def default_checkpoint():
    return ROOT / "samples" / "default-moe"


def test_export_inspect_run(default_checkpoint, tmp_path):
    bundle = tmp_path / "default.moedge"
    assert "experts" in moedge("export", default_checkpoint, "-o", bundle, "--group-size", "64").stdout
    shown = moedge("inspect", bundle, "--verify").stdout
    assert "4 layers (4 MoE)" in shown and "group 64" in shown and "checksums: ok" in shown
    ran = moedge("run", bundle, "--prompt", "The with statement", "-n", "12", "--temperature", "0.8",
                 "--seed", "1").stdout
    assert ran.startswith("The with statement")
    assert "12 tokens" in ran and "ms/token" in ran and "experts touched:" in ran


@pytest.mark.parametrize("args, message", [
    (["run", "/nonexistent.moedge", "--prompt", "x"], "not a moedge bundle"),
    (["export", "/nonexistent", "-o", "/tmp/never.moedge"], "is not a folder"),
    (["inspect", "/"], "not a moedge bundle"),
])
def test_bad_input_is_one_line_error(args, message):
    result = moedge(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["export", "run", "inspect", "eval"])
def test_help(command):
    assert "usage: moedge " + command in moedge(command, "--help").stdout
