"""The README stays true: every ```python block runs, and the quickstart commands are the CI's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


def test_quickstart_is_two_commands_and_ci_runs_the_test_command():
    text = README.read_text()
    quick = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", text, flags=re.S)
    assert quick, "README needs a '## Quickstart' section with one bash block"
    lines = [ln for ln in quick.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 2, lines
    assert "deepquant demo" in lines[0]
    assert "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in lines[1] and "python -m pytest -q" in ci
