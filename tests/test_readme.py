"""Every code block in the README runs here, in a scratch directory holding the repo's configs and
claims, on the tiny testbed (the flags appended below only shrink the work: profile, cache, steps,
rows). The two set-up commands are CI's own (tests/test_repo.py); the quickstart they run is
tests/eval/test_quickstart.py; the vLLM block runs in the vLLM leg."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from align.cli import main

ROOT = Path(__file__).resolve().parents[1]


def blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks under the README's ``## section``."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.+?)\n```", body, re.S)


def test_every_block_is_covered():
    sections = re.findall(r"(?m)^## (.+)$", (ROOT / "README.md").read_text())
    covered = {"Two commands": 2, "Train": 1, "Decode": 1, "Serve with vLLM": 2, "Evaluate": 1}
    assert {s: len(blocks(s)) for s in sections if blocks(s)} == covered


@pytest.fixture
def scratch(tmp_path, monkeypatch, tiny_testbed):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "data" / "claims", tmp_path / "data" / "claims")
    monkeypatch.chdir(tmp_path)
    return ["--profile", "tiny", "--cache_dir", str(tiny_testbed.root.parents[1])]


def run_bash(code: str, extra: dict[str, list[str]]) -> None:
    for line in code.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "align", line
        assert main(argv[1:] + extra.get(argv[1], [])) == 0, line


def test_train_then_evaluate_and_report(scratch, capsys):
    shrink = {"rpo": scratch + ["--max_steps", "2", "--n_train", "16", "--report_to", "none"],
              "reward": scratch + ["--max_steps", "2", "--n_train", "16", "--n_synthetic", "16", "--n_eval", "8", "--ensemble_size", "2",
                                   "--report_to", "none"]}
    ((lang, code),) = blocks("Train")
    assert lang == "bash"
    for line in code.splitlines():
        argv = shlex.split(line, comments=True)
        assert main(argv[1:] + shrink[argv[2]]) == 0, line
    assert Path("runs/train/rpo/model.safetensors").is_file() and Path("runs/train/reward/ensemble.json").is_file()
    ((lang, code),) = blocks("Evaluate")
    run_bash(code, {"eval": scratch + ["--max_new_tokens", "4", "--samples_per_prompt", "1"]})
    page = Path("runs/report.html").read_text()
    assert 'class="scoreboard"' in page and 'class="claims' in page
    assert Path("runs/eval/testbed/summary.json").is_file() and Path("runs/eval/training/summary.json").is_file()
    capsys.readouterr()


def test_decode_block(scratch, monkeypatch, tiny_testbed, capsys):
    import align.testbed

    monkeypatch.setattr(align.testbed, "load_testbed", lambda *a, **k: tiny_testbed)
    ((lang, code),) = blocks("Decode")
    assert lang == "python" and 'load_testbed("full")' in code
    exec(compile(code, "README.md:Decode", "exec"), {})
    assert capsys.readouterr().out.strip()  # the up-scaled model's answer


def test_fuse_block(scratch):
    (lang, code), _ = blocks("Serve with vLLM")
    run_bash(code, {"fuse": scratch})
    assert Path("runs/eft/config.json").is_file()


@pytest.mark.vllm
def test_serve_blocks_in_vllm(scratch):
    (_, fuse), (lang, code) = blocks("Serve with vLLM")
    run_bash(fuse, {"fuse": scratch})
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
