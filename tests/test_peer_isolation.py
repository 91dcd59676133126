"""A peer that crashes (llama.cpp's native code) takes only its own process: the bench reports it and goes on."""

from __future__ import annotations

import sys

from moedge.exporter.peers import run_apart

ECHO = "import json, sys; job = json.load(sys.stdin); print('noise'); print(json.dumps({'twice': 2 * job['n']}))"


def test_a_child_answers_with_its_last_line_of_json():
    assert run_apart([sys.executable, "-c", ECHO], {"n": 21}, "peer") == {"twice": 42}


def test_a_child_that_dies_or_fails_is_a_row_saying_so():
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert run_apart([sys.executable, "-c", crash], {}, "llama.cpp") == {"skipped": "llama.cpp died of SIGSEGV"}
    fail = "import sys; sys.stderr.write('loading\\nno such model\\n'); sys.exit(3)"
    assert run_apart([sys.executable, "-c", fail], {}, "llama.cpp") == {"skipped": "llama.cpp failed: no such model"}
