"""The SIGKILL-and-resume driver shared by the trainers' resume tests."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def kill_then_resume(script_text: str, tmp_path: Path, cache: str, kill_at: int, checkpoints: list[str],
                     before_resume: Callable[[Path], None] | None = None) -> tuple[dict, dict]:
    """Runs ``script_text`` (argv: cache, output dir, step to SIGKILL at or 0) straight through, then
    killed at ``kill_at`` (asserting it died by SIGKILL, wrote no result and left ``checkpoints``),
    then again to resume. Returns the straight and the resumed run's result JSON."""
    script = tmp_path / "run.py"
    script.write_text(script_text)

    def run(out: Path, kill: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), cache, str(out), str(kill)], capture_output=True,
                              text=True, timeout=600)

    straight = run(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run(tmp_path / "killed", kill_at)
    assert killed.returncode == -9 and not (tmp_path / "killed.json").exists()
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == checkpoints
    if before_resume is not None:
        before_resume(tmp_path / "killed")
    resumed = run(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return tuple(json.loads((tmp_path / f"{n}.json").read_text()) for n in ("straight", "killed"))
