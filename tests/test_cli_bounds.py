"""The ``deepquant bounds`` command (thin CLI over deepquant.mmot.bounds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from deepquant.cli import main
from deepquant.market.marginals import Marginals
from tests.conftest import random_walk_marginals


@pytest.fixture
def rw_file(tmp_path):
    path = tmp_path / "rw.npz"
    Marginals(*random_walk_marginals(4)).save(path)
    return path


def _run(*args):
    return CliRunner().invoke(main, ["bounds", *map(str, args)])


def test_asian_json(rw_file):
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("lower", "upper", "method", "status", "seconds"):
        assert key in out
    # DESIGN §2.3 reference values (6 decimals)
    assert out["lower"] == pytest.approx(0.639111, abs=1e-6)
    assert out["upper"] == pytest.approx(0.794667, abs=1e-6)
    assert out["method"] == "lp" and out["status"] == "optimal"


def test_forward_start_dates_and_path_lp(rw_file):
    res = _run(rw_file, "--payoff", "forward-start-straddle", "--t1", 1, "--t2", 3,
               "--method", "path-lp", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["lower"] == pytest.approx(0.910667, abs=1e-6)
    assert out["upper"] == pytest.approx(1.934222, abs=1e-6)


def test_barrier_table(rw_file):
    """The table shows the bounds; the JSON carries them with the problem's payoff parameters.
    Oracle: the path-space LP over the 5^3 paths of the walk gives [0, 0.144] (HiGHS, 1e-9)."""
    res = _run(rw_file, "--payoff", "up-and-out-call", "--strike", 100, "--barrier", 102)
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in res.output.splitlines() if line.count("│") == 3}
    assert (rows["lower"], rows["upper"], rows["status"]) == ("0", "0.144", "optimal")
    out = json.loads(_run(rw_file, "--payoff", "up-and-out-call", "--strike", 100, "--barrier",
                          102, "--json").output)
    assert out["lower"] == pytest.approx(0.0, abs=1e-9)
    assert out["upper"] == pytest.approx(0.144, abs=1e-9)
    assert out["problem"]["params"] == out["params"] == dict(
        strike=100.0, barrier=102.0, barrier_type="up-and-out", dates=None)


def test_errors(rw_file, tmp_path):
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 1.0, "--t1", 9)
    assert res.exit_code == 2 and "does not take these parameters" in res.output
    res = _run(rw_file, "--payoff", "forward-start-call", "--t1", 0, "--t2", 7)
    assert res.exit_code == 2 and "t2=7 out of range" in res.output
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 1.0, "--eps", 0.1)
    assert res.exit_code == 2 and "eps is only used" in res.output
    res = _run(tmp_path / "missing.npz", "--payoff", "asian-call", "--strike", 1.0)
    assert res.exit_code == 2 and "does not exist" in res.output
    res = _run(rw_file, "--payoff", "no-such-payoff")
    assert res.exit_code == 2
    # parameters that define the payoff are required, never defaulted silently
    res = _run(rw_file, "--payoff", "up-and-out-call", "--strike", 100)
    assert res.exit_code == 2 and "up-and-out-call needs --barrier" in res.output
    res = _run(rw_file, "--payoff", "asian-call")
    assert res.exit_code == 2 and "asian-call needs --strike" in res.output
    res = _run(rw_file, "--payoff", "asian-call", "--strike", "nan")
    assert res.exit_code == 2 and "'--strike': nan is not a finite number" in res.output


@pytest.mark.parametrize("payoff, args", [
    ("asian-call", ["--strike", "-1"]),
    ("european-put", ["--strike", "0"]),
    ("forward-start-straddle", ["--strike", "0"]),
    ("up-and-out-call", ["--strike", "1", "--barrier", "0"]),
    ("down-and-in-put", ["--strike", "1", "--barrier", "-0.5"]),
])
def test_levels_at_or_below_zero_are_refused(rw_file, payoff, args):
    """The underlying is positive: at or below 0 a call is the forward, a put worth 0, a
    forward start's payoff linear, an up barrier crossed at once and a down one never (they were
    priced without a word). The payoff classes still take any real level."""
    from deepquant.payoffs import make_payoff

    res = _run(rw_file, "--payoff", payoff, *args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    option, value = args[-2:]
    assert f"Invalid value for '{option}': {float(value)} is not in the range x>0.0" \
        in res.output
    assert make_payoff(payoff, **{option[2:]: float(value)})  # the library accepts it


def test_not_in_convex_order(tmp_path):
    grid = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    w = np.array([[0, 0, 1, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0.25, 0.5, 0.25, 0.0]])
    path = tmp_path / "bad.npz"
    Marginals(grid, w, check_convex=False).save(path)
    res = _run(path, "--payoff", "asian-call", "--strike", 1.0)
    assert res.exit_code == 2 and "convex order" in res.output
    res = _run(path, "--payoff", "asian-call", "--strike", 1.0, "--martingale-tol", 0.06, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["martingale_tol"] == 0.06
    # the JSON params show every parameter of the payoff, defaults included
    assert out["params"] == {"strike": 1.0, "dates": None, "weights": None}


def test_infeasible_relaxed_lp_says_why_without_json(tmp_path):
    grid = np.linspace(0.5, 1.5, 11)
    w = np.zeros((2, 11))
    w[0, [2, 8]] = 0.5
    w[1, 5] = 1.0   # a point mass after a spread law: no martingale within a 0.01 drift
    path = tmp_path / "bad.npz"
    Marginals(grid, w, check_convex=False).save(path)
    res = _run(path, "--payoff", "european-call", "--strike", 1.0, "--martingale-tol", 0.01)
    assert res.exit_code == 1
    assert "infeasible" in res.output and "martingale_tol=0.01" in " ".join(res.output.split())


def test_ipm_matches_the_lp_on_a_pairwise_payoff(rw_file):
    # the interior point method's certified bracket contains the exact LP value (to 1e-8)
    base = [rw_file, "--payoff", "forward-start-straddle", "--t1", 1, "--t2", 2, "--json"]
    lp = json.loads(_run(*base, "--method", "lp").output)
    res = _run(*base, "--method", "ipm", "--rtol", 1e-7)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["method"] == "ipm"
    assert out["lower"] <= lp["lower"] + 1e-8 and out["upper"] >= lp["upper"] - 1e-8
    assert out["lower"] == pytest.approx(lp["lower"], abs=1e-6)
    assert out["upper"] == pytest.approx(lp["upper"], abs=1e-6)


def test_grid_check_shows_the_bounds_on_every_other_point(rw_file):
    """``--grid-check``: the bounds of the same payoff on the laws moved onto every other grid
    point, against the library's exact LP on ``coarse_marginals`` computed here (1e-9); the
    walk's X_0 = 100 stays a point mass, and the halved laws keep mass and mean."""
    from deepquant.mmot.bounds import bounds
    from deepquant.mmot.entropic import coarse_marginals
    from deepquant.payoffs import AsianCall

    res = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--grid-check", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    fine = Marginals.load(rw_file)
    half = coarse_marginals(fine, offset=int(np.argmax(fine.weights[0])) % 2)
    assert 100.0 in half.grid and half.weights[0][list(half.grid).index(100.0)] == 1.0
    np.testing.assert_allclose(half.weights @ half.grid, fine.weights @ fine.grid, atol=1e-12)
    ref = bounds(half, AsianCall(strike=100.0), "lp")
    check = out["grid_check"]
    assert check["size"] == half.size == 7
    assert check["lower"] == pytest.approx(ref.lower, abs=1e-9)
    assert check["upper"] == pytest.approx(ref.upper, abs=1e-9)
    assert check["lower_change"] == pytest.approx(out["lower"] - ref.lower, abs=1e-12)
    table_out = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--grid-check").output
    assert "lower on 7 points" in table_out and "grid effect 7 -> 13 points, upper" in table_out
    assert "grid_check" not in json.loads(
        _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--json").output)


def test_coarse_marginals_rejects_a_bad_offset(rw_file):
    from deepquant.mmot.entropic import coarse_marginals

    with pytest.raises(ValueError, match="offset must be 0 or 1, got 2"):
        coarse_marginals(Marginals.load(rw_file), offset=2)
    # fifth pass: 1.0 was an IndexError from numpy, True ran as 1, None an AttributeError
    for bad in (1.0, True):
        with pytest.raises(ValueError, match=f"offset must be 0 or 1, got {bad!r}"):
            coarse_marginals(Marginals.load(rw_file), offset=bad)
    with pytest.raises(TypeError, match="marginals must be a Marginals, got NoneType"):
        coarse_marginals(None)


def test_grid_check_refuses_a_grid_that_halving_keeps(tmp_path):
    """Fifth pass: on 3 points with X_0 in the middle, "every other point and both ends" is
    every point, and ``--grid-check`` reported a grid effect of 0 ("3 -> 3 points")."""
    from deepquant.mmot.resolution import halved_bounds, halved_marginals
    from deepquant.payoffs import EuropeanCall

    m3 = Marginals(np.array([0.9, 1.0, 1.1]), np.array([[0, 1.0, 0], [0.5, 0, 0.5]]), [0, 1])
    for fn in (lambda: halved_marginals(m3), lambda: halved_bounds(m3, EuropeanCall(1.0))):
        with pytest.raises(ValueError, match="marginals on 3 grid points cannot be halved"):
            fn()
    path = tmp_path / "m3.npz"
    m3.save(path)
    res = _run(path, "--payoff", "european-call", "--strike", 1, "--grid-check")
    assert res.exit_code == 2
    assert "--grid-check: marginals on 3 grid points cannot be halved" in res.output
    assert "lower" not in res.output   # refused before the bounds are computed
    # with X_0 on an end, halving 3 points keeps 2: a check that compares something
    m3_end = Marginals(m3.grid, np.array([[1.0, 0, 0], [1.0, 0, 0]]), [0, 1])
    assert halved_marginals(m3_end).size == 2


def test_workers_reach_the_certified_method_and_are_refused_where_unused(rw_file):
    """``--workers 2`` runs the certified method (the bracket still holds the exact LP values
    of ``test_asian_json``); methods that do not read it, and values other than 1 or 2, are
    usage errors naming the option."""
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--method", "certified",
               "--workers", 2, "--max-seconds", 20, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["lower"] <= 0.639111 + 1e-6 and out["upper"] >= 0.794667 - 1e-6
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--method", "lp",
               "--workers", 2)
    assert res.exit_code == 2 and "--workers 2 is not used by --method lp" in res.output
    res = _run(rw_file, "--payoff", "asian-call", "--strike", 100, "--workers", 3)
    assert res.exit_code == 2 and "'--workers': 3 is not in the range 1<=x<=2" in res.output


def test_a_bound_from_the_relaxation_says_so(rw_file):
    # a forward start skipping a date, with no time for the chain's own stages: each side's
    # bound is the relaxation's to the two dates read, and the table names them
    res = _run(rw_file, "--payoff", "forward-start-straddle", "--t1", 1, "--t2", 3,
               "--method", "certified", "--max-seconds", 1e-6)
    assert res.exit_code in (0, 1), res.output
    for name in ("lower", "upper"):
        assert f"{name} bound from" in res.output
    assert "relaxation to dates 1, 3" in res.output
    exact = json.loads(_run(rw_file, "--payoff", "forward-start-straddle", "--t1", 1, "--t2", 3,
                            "--method", "lp", "--json").output)
    out = json.loads(_run(rw_file, "--payoff", "forward-start-straddle", "--t1", 1, "--t2", 3,
                          "--method", "certified", "--max-seconds", 1e-6, "--json").output)
    assert out["lower"] <= exact["lower"] + 1e-9 and out["upper"] >= exact["upper"] - 1e-9
