"""The README's set-up commands are what CI and a new user run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_two_setup_commands():
    main_job, tests = readme_commands()[:2]
    assert "-c constraints.txt" in main_job and "align quickstart" in main_job
    assert "-c constraints.txt" in tests and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_constraints_pin_exact_versions():
    for name in ("constraints.txt", "constraints-vllm.txt"):
        lines = [l for l in (ROOT / name).read_text().splitlines() if l and not l.startswith("#")]
        assert all("==" in l for l in lines), name
        pins = dict(l.split("==") for l in lines)
        assert pins["torch"].startswith("2.13.0") and pins["trl"].startswith("1.16.")


def imported_packages(package: str) -> set[tuple[str, str]]:
    """(file, top-level package) for every absolute import in ``package``'s modules."""
    import ast

    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((path.name, node.module.split(".")[0]))
    return found


def test_dependencies_point_one_way():
    """decoding <- rewards <- align: the lower packages never import the higher ones."""
    assert not {(f, p) for f, p in imported_packages("decoding") if p in ("align", "rewards")}
    assert not {(f, p) for f, p in imported_packages("rewards") if p == "align"}
    assert any(p == "decoding" for _, p in imported_packages("rewards"))
