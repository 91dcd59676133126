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


SLOW_EXPORT = """
import sys, time
from moedge.exporter import bundle_writer
write_graphs = bundle_writer._write_graphs
def slow(*args, **kwargs):
    names = write_graphs(*args, **kwargs)
    print("graphs written", flush=True)
    time.sleep(120)  # the test terminates us here, mid-export
    return names
bundle_writer._write_graphs = slow
from moedge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_terminated_export_leaves_nothing(tmp_path):
    import signal

    import torch

    from conftest import build_model, tiny_moe_spec
    from moedge.exporter.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(tiny_moe_spec()), tmp_path / "ckpt")
    out = tmp_path / "out" / "b.moedge"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, "export", str(ckpt), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "graphs written"
    assert any(out.parent.iterdir())  # the partial bundle is there now
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 143, proc.stderr.read()
    assert not out.exists() and list(out.parent.iterdir()) == []
