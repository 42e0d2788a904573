"""Progress of long commands on a stderr that is not a terminal (a CI log, ``2> log``; click's
CliRunner is not one): rich draws its bars and spinners there only when they stop, so a job
printed nothing for minutes. ``deepquant.cli.output.progress`` and ``activity`` add plain
lines every ``PLAIN_PROGRESS_SECONDS`` (set small here)."""

from __future__ import annotations

import re
import time

import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.marginals import Marginals
from tests.conftest import random_walk_marginals


@pytest.fixture
def often(monkeypatch):
    monkeypatch.setattr("deepquant.cli.output.PLAIN_PROGRESS_SECONDS", 0.05)


def test_generate_prints_plain_progress_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("deepquant.cli.output.PLAIN_PROGRESS_SECONDS", 0.0)  # every update
    r = CliRunner().invoke(main, ["generate", "--num", "3", "--grid-size", "20", "--n-choices",
                                  "2", "--families", "gbm", "--backend", "serial", "--out",
                                  str(tmp_path / "d.h5")])
    assert r.exit_code == 0, r.output
    lines = re.findall(r"^instances: (\d)/3 \((\d+)%\), 0:00:\d\d elapsed$", r.stderr, re.M)
    assert lines[0] == ("0", "0") and lines[-1] == ("3", "100"), r.stderr  # at once, on updates


def test_plain_lines_are_rate_limited(monkeypatch):
    """Updates closer than PLAIN_PROGRESS_SECONDS print nothing (one line at the start)."""
    from deepquant.cli import output

    monkeypatch.setattr(output, "PLAIN_PROGRESS_SECONDS", 3600.0)
    printed = []
    monkeypatch.setattr(output.err_console, "print", lambda *a, **k: printed.append(a[0]))
    bar = output._LoggedProgress(console=output.err_console)
    task = bar.add_task("runs", total=100)
    for i in range(100):
        bar.update(task, completed=i + 1)
    assert printed == ["runs: 0/100 (0%), 0:00:00 elapsed"]


def test_bounds_prints_a_heartbeat_while_the_solver_runs(tmp_path, often, monkeypatch):
    """The LP reports no iterations: on a terminal a spinner, on a log a line every
    PLAIN_PROGRESS_SECONDS while it runs (here made to take 0.4 s)."""
    import importlib

    mb = importlib.import_module("deepquant.mmot.bounds")  # the module (the package re-exports
    # its function under the same name)
    path = tmp_path / "rw.npz"
    Marginals(*random_walk_marginals(4)).save(path)
    solve = mb.bounds

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return solve(*args, **kwargs)

    monkeypatch.setattr(mb, "bounds", slow)
    r = CliRunner().invoke(main, ["bounds", str(path), "--payoff", "asian-call", "--strike",
                                  "100", "--method", "lp"])
    assert r.exit_code == 0, r.output
    first, *beats = r.stderr.splitlines()
    assert re.fullmatch(r"deepquant bounds: lp on \d+ points x \d+ dates", first), r.stderr
    assert len(beats) >= 2 and all(
        re.fullmatch(re.escape(first) + r": still running, 0:00:00 elapsed", b) for b in beats)
    r = CliRunner().invoke(main, ["bounds", str(path), "--payoff", "asian-call", "--strike",
                                  "100", "--method", "lp", "--json"])
    assert r.exit_code == 0 and r.stderr == ""  # --json: nothing on stderr


def test_demo_prints_each_step_on_a_log(often, monkeypatch, tmp_path):
    def fake_run_demo(chain, out, *, config, pricers, progress):
        progress("calibrating the chain")
        time.sleep(0.2)
        raise ValueError("stopped here")

    monkeypatch.setattr("deepquant.demo.run_demo", fake_run_demo)
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "stopped here" in r.output
    lines = r.stderr.splitlines()
    assert lines[:2] == ["deepquant demo", "deepquant demo: calibrating the chain"], r.stderr
    assert "deepquant demo: calibrating the chain: still running, 0:00:00 elapsed" in lines


def test_tables_on_a_pipe_keep_every_digit():
    # stdout a pipe, no COLUMNS: rich would assume 80 columns and cut a wide table's numbers
    # ("0.0284..."); the console is PIPED_WIDTH wide there
    import os
    import subprocess
    import sys

    code = ("from deepquant.cli.output import console, table\n"
            "cols = ['payoff', 'M', 'lower', 'upper', 'method', 'gap lower', 'gap upper', 's',"
            " 'bound from']\n"
            "console.print(table('t', cols, [['Fwd-start straddle', 150, 0.0579569123,"
            " 0.107558321, 'certified', '3.1e-10', '1.5e-13', '18.6',"
            " 'both: relaxation to dates 1, 5']]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    for text in ("Fwd-start straddle", "0.0579569", "0.107558", "both: relaxation to dates 1, 5"):
        assert text in out, out
    assert "…" not in out
