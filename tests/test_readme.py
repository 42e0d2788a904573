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


def _cli_lines() -> list[str]:
    text = README.read_text()
    block = re.search(r"## Command line\n.*?```bash\n(.*?)```", text, flags=re.S)
    assert block, "README needs a '## Command line' section with a bash block"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_command_line_block_runs(tmp_path):
    """Every line of the README's first command-line block runs (in order, in a scratch folder;
    ``../shared`` is pointed at the real shared folder; the SPX line is skipped without it)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import SPX_DATA

    exe = shutil.which("deepquant", path=os.path.dirname(sys.executable)) or shutil.which(
        "deepquant")
    assert exe, "the deepquant console script is not installed"
    work = tmp_path / "repo"
    work.mkdir()
    shared = SPX_DATA.parent.parent
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    env = dict(os.environ, MPLBACKEND="Agg")
    for line in _cli_lines():
        if "../shared" in line and not shared.exists():
            continue
        assert line.startswith("deepquant "), line
        res = subprocess.run([exe, *line.split()[1:]], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
