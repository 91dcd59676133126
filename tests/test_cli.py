"""The CLI end to end, through subprocesses: export → inspect → run, and one-line errors."""

import argparse
import subprocess
import sys

import pytest

from helpers import ROOT, run_cli


def moedge(*args, check=True):
    result = run_cli(*args)
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
    assert "4 layers (4 MoE)" in shown and "group 64" in shown and "checksums: experts.bin: 32 expert spans ok" in shown
    head = next(line for line in shown.splitlines() if line.strip().startswith("LM head"))
    assert "int8" in head and "8.50 bits/weight" in head  # int8 codes + one float32 scale per 64
    ran = moedge("run", bundle, "--prompt", "The with statement", "-n", "12", "--temperature", "0.8", "--seed", "1")
    assert "12 tokens" in ran.stderr and "ms/token" in ran.stderr and "experts touched:" in ran.stderr
    quiet = moedge("run", bundle, "--prompt", "The with statement", "-n", "12", "--temperature", "0.8", "--seed", "1",
                   "-q")
    assert quiet.stdout == ran.stdout and quiet.stderr == "" and len(ran.stdout) > 12  # the generated text alone
    assert not ran.stdout.startswith("The with statement")
    piped = run_cli("run", bundle, "--prompt", "-", "-n", "12", "--temperature", "0.8", "--seed", "1", "-q",
                    input="The with statement")
    (tmp_path / "prompt.txt").write_text("The with statement")
    from_file = moedge("run", bundle, "-f", tmp_path / "prompt.txt", "-n", "12", "--temperature", "0.8", "--seed",
                       "1", "-q")
    assert piped.stdout == from_file.stdout == ran.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "/nonexistent.moedge", "--prompt", "x"], "no such bundle"),
    (["export", "/nonexistent", "-o", "/tmp/never.moedge"], "is neither a folder"),
    (["inspect", "/"], "not a moedge bundle"),
    (["run", "/nonexistent.moedge", "-f", "/nonexistent.txt"], "--file /nonexistent.txt: No such file or directory"),
    (["run", "/nonexistent.moedge", "-f", sys.executable], f"--file {sys.executable}: not UTF-8 text"),
])
def test_bad_input_is_one_line_error(args, message):
    result = moedge(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["export", "run", "chat", "inspect", "eval", "bench"])
def test_help(command):
    assert "usage: moedge " + command in moedge(command, "--help").stdout


def test_every_option_has_help():
    from moedge.cli.main import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"moedge {name} {action.dest} has no help"


def test_version():
    from moedge.runtime.bundle import FORMAT_VERSION

    assert moedge("--version").stdout.strip() == f"moedge 0.1.0 (bundle format {FORMAT_VERSION})"


def test_token_ids_in_and_out_without_a_tokenizer(exported):
    from helpers import VOCAB, tiny_moe_spec
    from moedge.runtime import Model

    bundle = exported("cli-compile", tiny_moe_spec()).bundle
    ran = moedge("run", bundle, "--ids", "5,7, 9", "-n", "6", "-q")
    want = [t.id for t in Model.load(bundle).generate([5, 7, 9], max_new_tokens=6)]
    assert [int(i) for i in ran.stdout.split()] == want
    outside = moedge("run", bundle, "--ids", f"5,{VOCAB}", check=False)
    assert outside.returncode == 2 and f"--ids: token id {VOCAB} is outside the vocabulary" in outside.stderr
    text = moedge("run", bundle, "--prompt", "hello", check=False)
    assert text.returncode == 2 and "no tokenizer: pass token ids" in text.stderr
    too_long = moedge("run", bundle, "--ids", "1,2,3", "-n", "94", check=False)
    assert too_long.returncode == 2 and too_long.stderr.startswith("moedge: error: -n 94: the prompt's 3 tokens")


@pytest.mark.parametrize("read_ahead", ["on", "off", "auto"])
def test_run_under_an_expert_budget_reading_ahead_or_not(exported, read_ahead):
    """Under a budget of a few experts, with reading ahead always, never or while it pays, `run` prints the
    tokens of an unbudgeted run."""
    from helpers import tiny_moe_spec
    from moedge.runtime import Model

    bundle = exported("cli-compile", tiny_moe_spec()).bundle
    want = [t.id for t in Model.load(bundle).generate([5, 7, 9], max_new_tokens=12)]
    ran = moedge("run", bundle, "--ids", "5,7,9", "-n", "12", "--expert-budget-mb", "0.05", "--read-ahead",
                 read_ahead)
    assert [int(i) for i in ran.stdout.split()] == want
    assert "released" in ran.stderr  # the budget held fewer experts than the run routed to
    # always; never, nor by default in a run this short (the governor's first trial comes after 64 steps)
    assert ("read ahead (" in ran.stderr) == (read_ahead == "on"), ran.stderr
    assert "warning" not in ran.stderr


def test_read_ahead_without_a_budget_is_named_as_without_effect(exported):
    from helpers import tiny_moe_spec

    bundle = exported("cli-compile", tiny_moe_spec()).bundle
    free = moedge("run", bundle, "--ids", "5,7", "-n", "2", "--read-ahead", "on")
    assert "moedge: warning: --read-ahead on has no effect: the experts fit in memory" in free.stderr
    tight = moedge("run", bundle, "--ids", "5,7", "-n", "2", "--read-ahead", "on", "--expert-budget-mb", "0.02")
    assert "has no effect: the expert budget holds fewer than two layers' experts" in tight.stderr
    assert "warning" not in moedge("run", bundle, "--ids", "5,7", "-n", "2").stderr  # the default: auto


def test_sampling_flags_at_temperature_zero_are_named_as_unused(exported):
    from helpers import tiny_moe_spec

    bundle = exported("cli-compile", tiny_moe_spec()).bundle
    greedy = moedge("run", bundle, "--ids", "5,7", "-n", "2", "--top-k", "5", "--seed", "3")
    assert "moedge: warning: --top-k, --seed have no effect at --temperature 0 (greedy decoding)" in greedy.stderr
    sampled = moedge("run", bundle, "--ids", "5,7", "-n", "2", "--top-k", "5", "--temperature", "0.7")
    assert "warning" not in sampled.stderr


def test_an_error_never_shares_a_line_with_the_text(exported, capsys, monkeypatch):
    """A failure mid-generation: the streamed text's line is ended before the one-line error."""
    from helpers import tiny_moe_spec
    from moedge.cli.main import main
    from moedge.runtime import NumericalError
    from moedge.runtime.session import Session

    def failing(self, token):
        raise NumericalError("the activations stopped being finite")
    monkeypatch.setattr(Session, "decode", failing)
    assert main(["run", str(exported("cli-compile", tiny_moe_spec()).bundle), "--ids", "1,2", "-n", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out.endswith("\n") and captured.out.strip()  # one id printed, then its line ended
    assert captured.err == "moedge: error: the activations stopped being finite\n"


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

    from helpers import build_model, tiny_moe_spec
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


@pytest.mark.parametrize("args, message", [
    (["run", "B", "--prompt", "x", "--threads", "-1"], "argument --threads: must be a whole number in [1, 1024]"),
    (["run", "B", "--prompt", "x", "--temperature", "nan"], "argument --temperature: must be a finite number >= 0"),
    (["run", "B", "--prompt", "x", "--top-p", "0"], "argument --top-p: must be a finite number (0, 1]"),
    (["run", "B", "--prompt", "x", "-n", "2.5"], "argument -n: must be a whole number"),
    (["run", "B", "--prompt", "x", "--expert-budget-mb", "-3"], "argument --expert-budget-mb"),
    (["run", "B", "--prompt", "x", "--read-ahead", "always"], "argument --read-ahead: invalid choice: 'always'"),
    (["serve", "B", "--read-ahead", "yes"], "argument --read-ahead: invalid choice: 'yes'"),
    (["run", "B"], "one of the arguments --prompt -f/--file --ids is required"),
    (["run", "B", "--prompt", "x", "--ids", "1"], "argument --ids: not allowed with argument --prompt"),
    (["run", "B", "--ids", "1,x"], "argument --ids: must be token ids like 1,2,3, got '1,x'"),
    (["chat", "B", "--top-p", "2"], "argument --top-p: must be a finite number (0, 1]"),
    (["chat", "B", "-n", "0"], "argument -n: must be a whole number >= 1"),
    ([], "the following arguments are required: command"),
    (["bench", "B", "--threads", "0"], "argument --threads: must be a whole number in [1, 1024]"),
    (["bench", "B", "--repeat", "0"], "argument --repeat: must be a whole number >= 1"),
    (["bench", "B", "--new-tokens", "3"], "argument --new-tokens: must be a whole number >= 5"),
    (["bench", "B", "--plot", "/nonexistent/r.png"], "argument --plot: the folder '/nonexistent' does not exist"),
    (["bench", "B", "--plot", "r.jpg"], "argument --plot: must name a .png file"),
    (["eval", "B", "--text", "t", "--threads", "-1"], "argument --threads"),
    (["eval", "B", "--text", "t", "--usage", "/nonexistent/u.png"], "argument --usage: the folder"),
    (["export", "S", "-o", "O", "--group-size", "48"], "argument --group-size: invalid choice: 48"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_options_name_the_option_in_one_line(args, message, capsys):
    from moedge.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and err.startswith("moedge: error: ")


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    from moedge.cli import options
    from moedge.runtime import InputError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(InputError, match=r"bench --plot needs matplotlib: pip install 'moedge\[plot\]'"):
        options.require("matplotlib", purpose="bench --plot")


def test_bundle_errors_are_one_line_through_the_cli(tmp_path, capsys):
    from moedge.cli.main import main

    (tmp_path / "b.moedge").mkdir()
    (tmp_path / "b.moedge" / "manifest.json").write_text('{"format": "moedge-bundle", "format_version": 3}')
    assert main(["inspect", str(tmp_path / "b.moedge")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moedge: error: ") and "\n" not in err and "lacks the field(s)" in err


def test_inspect_shows_format_tokenizer_template_bos_eos_graphs_and_storage(chat_bundle, exported):
    shown = moedge("inspect", chat_bundle[0]).stdout.splitlines()
    assert shown[0] == "format: moedge bundle version 3"
    assert "tokenizer: tokenizer.json (25 tokens); chat template: yes (157 characters)" in shown
    assert "bos: 1 '<s>'; eos: 2 '</s>'" in shown
    assert any(line.startswith("graphs: 2 layer graphs of 5.") for line in shown)
    stored = stored_parts("\n".join(shown))
    assert stored["dense linears"][:2] == ["float32", "32.00"] and stored["LM head"][:2] == ["int8", "8.50"]
    from helpers import tiny_moe_spec

    bare = moedge("inspect", exported("cli-compile", tiny_moe_spec()).bundle).stdout
    assert "tokenizer: none (prompts must be token ids); chat template: none" in bare and "bos: none; eos: none" in bare
    span = 8192  # one page-aligned span per expert: 3 x 64 x 32 int8 codes and scales, padded
    assert stored_parts(bare)["experts"][:4] == ["int8", "per", "channel", f"{8 * span / (3 * 64 * 32):.2f}"]


def stored_parts(shown: str) -> dict[str, list[str]]:
    """`inspect`'s "stored as" rows: part name -> the words after it."""
    return {line[:29].strip(): line[29:].split() for line in shown.splitlines() if "bits/weight" in line}


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    from moedge.cli.main import main

    (tmp_path / "u.json").mkdir()  # where --usage would write its counts
    (tmp_path / "r.json").mkdir()
    usage, report = str(tmp_path / "u.json"), str(tmp_path / "r.json")
    for args, message in [(["eval", "B", "--text", "t", "--usage", str(tmp_path / "u.png")], f"{usage!r} is a folder"),
                          (["bench", "B", "--json", report], f"{report!r} is a folder"),
                          (["bench", "B", "--plot", str(tmp_path / "no" / "r.png")], "the folder")]:
        with pytest.raises(SystemExit):
            main(args)
        assert message in capsys.readouterr().err


BLOCKED = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed
from moedge.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("blocked, args, message", [
    ("torch", ["export", "SRC", "-o", "OUT"], "moedge export needs torch: pip install 'moedge[export]'"),
    ("matplotlib", ["bench", "BUNDLE", "--plot", "r.png"], "bench --plot needs matplotlib: pip install 'moedge[plot]'"),
    ("matplotlib", ["eval", "BUNDLE", "--text", "t", "--usage", "u.png"],
     "eval --usage needs matplotlib: pip install 'moedge[plot]'"),
    ("torch", ["eval", "BUNDLE", "--text", "t", "--reference", "R"],
     "eval --reference needs torch: pip install 'moedge[export]'"),
    ("torch,onnx", ["bench", "BUNDLE", "--peers"], "bench --peers needs torch, onnx: pip install 'moedge[export]'"),
])
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(blocked, args, message, tmp_path):
    result = subprocess.run([sys.executable, "-c", BLOCKED, blocked, *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr == f"moedge: error: {message}\n" and result.stdout == ""
