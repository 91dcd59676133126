"""The device side (runtime, quant) never imports torch, transformers or the exporter."""

import subprocess
import sys
from pathlib import Path

from conftest import tiny_moe_spec

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
import moedge.quant
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
