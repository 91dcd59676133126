"""The device side (runtime, quant) never imports torch, transformers or the exporter."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_moe_spec

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "moedge.exporter", "exporter")

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers') or name.startswith('moedge.exporter'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from moedge.runtime import Model
from moedge.runtime.warmup import install_calls
import moedge.quant
assert install_calls()  # what `moedge warmup` compiles at install time
model = Model.load(sys.argv[1], threads=1)
print(len(list(model.generate([1, 2, 3], max_new_tokens=4))))
"""


def test_runtime_runs_with_torch_blocked(exported):
    case = exported("no_torch", tiny_moe_spec())
    result = subprocess.run([sys.executable, "-c", BLOCKER, str(case.bundle)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"


def test_device_sources_do_not_import_torch():
    for part in ("runtime", "quant"):
        for path in (ROOT / part).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1:
                    assert not words[1].lstrip(".").startswith(FORBIDDEN), f"{path}: {line}"


CLI_BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'onnx', 'safetensors', 'matplotlib'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from moedge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args, extra", [
    (["export", "SRC", "-o", "OUT"], "moedge export needs torch, onnx, safetensors: pip install 'moedge[export]'"),
    (["bench", "BUNDLE", "--peers"], "bench --peers needs torch, onnx: pip install 'moedge[export]'"),
    (["bench", "BUNDLE", "--plot", "r.png"], "bench --plot needs matplotlib: pip install 'moedge[plot]'"),
    (["eval", "BUNDLE", "--text", "t", "--reference", "R"], "eval --reference needs torch"),
])
def test_runtime_only_install_names_the_missing_extra(exported, tmp_path, args, extra):
    bundle = str(exported("no_torch", tiny_moe_spec()).bundle)
    args = [bundle if a == "BUNDLE" else str(tmp_path / a) if a in ("SRC", "OUT", "r.png") else a for a in args]
    result = subprocess.run([sys.executable, "-c", CLI_BLOCKED, *args], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 2 and extra in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_the_runtime_install_requires_nothing_of_the_exporter():
    """`pip install moedge` (what a Raspberry Pi runs; `make check-arm64` does it on aarch64) brings the runtime's
    dependencies and none of the exporter's: those come only with an extra."""
    import re
    from importlib.metadata import requires

    always = [r for r in requires("moedge") if "extra ==" not in r]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in always}
    assert names >= {"numpy", "onnxruntime", "numba", "tokenizers"}
    assert not names & {"torch", "onnx", "transformers", "safetensors", "matplotlib", "gguf"}, names
