"""The README's two set-up commands are the ones CI and users run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"^(python3 -m venv \.venv && .+)$", readme, flags=re.MULTILINE)


def test_readme_has_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert main_job.endswith("soundingearth-zoo demo runs/demo")
    assert tests.endswith("-m pytest")


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _setup_commands()[1] in ci_lines
