"""Every command that writes a file checks the location BEFORE the work: one line naming the
option and the path, exit code 2, nothing computed and nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.marginals import Marginals


@pytest.fixture
def blocker(tmp_path):
    """A regular file: every path below it is unwritable."""
    p = tmp_path / "plain.txt"
    p.write_text("not a folder")
    return p


@pytest.fixture
def no_work(monkeypatch):
    """Make the expensive library calls fail the test if they are reached."""
    from importlib import import_module

    cal = import_module("deepquant.market.calibrate")
    chain = import_module("deepquant.market.chain")
    syn = import_module("deepquant.market.synthetic")
    ent = import_module("deepquant.mmot.entropic")

    def boom(*a, **k):
        raise AssertionError("the work ran before the output path was checked")

    monkeypatch.setattr(cal, "calibrate_chain", boom)
    monkeypatch.setattr(chain, "synthetic_chain", boom)
    monkeypatch.setattr(syn, "model_params", boom)
    monkeypatch.setattr(ent, "solve_entropic", boom)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def check(res, option, path):
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert f"{option}: cannot write the" in line and str(path) in line
    assert "regular file, not a folder" in line
    assert "Traceback" not in res.output


def test_marginals_out_and_plot(blocker, no_work):
    check(run("marginals", "--out", blocker / "m.npz"), "--out", blocker / "m.npz")
    check(run("marginals", "--out", blocker.parent / "ok.npz", "--plot", blocker / "p.png"),
          "--plot", blocker / "p.png")


def test_chain_out(blocker, no_work):
    check(run("chain", "--out", blocker / "c.csv"), "--out", blocker / "c.csv")


def test_calibrate_out_and_figures(blocker, no_work, tmp_path):
    csv = tmp_path / "chain.csv"
    csv.write_text("quote_date,expiry,strike,type,bid,ask\n")
    check(run("calibrate", csv, "--out", blocker / "m.npz"), "--out", blocker / "m.npz")
    check(run("calibrate", csv, "--out", tmp_path / "m.npz", "--figures", blocker / "figs"),
          "--figures", blocker / "figs")


def test_solve_plot(blocker, no_work, tmp_path):
    grid = np.linspace(0.5, 1.5, 11)
    w = np.zeros((2, 11))
    w[0, 5] = 1.0
    w[1, [4, 6]] = 0.5
    path = Marginals(grid, w).save(tmp_path / "m.npz")
    check(run("solve", path, "--eps", 0.1, "--plot", blocker / "p.png"), "--plot",
          blocker / "p.png")
