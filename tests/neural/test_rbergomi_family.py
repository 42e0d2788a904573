"""The rough Bergomi family, supports of random widths and the range of N (1 to the network's
maximum) of ``deepquant generate``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from deepquant.cli import main  # noqa: E402
from deepquant.neural import data as nd  # noqa: E402
from deepquant.neural import families as fam  # noqa: E402
from tests.neural import helpers  # noqa: E402

GRID = nd.model_grid(150)
I_ONE = int(np.argmin(np.abs(GRID - 1.0)))


def test_rbergomi_marginals_are_convex_ordered_and_reproducible():
    times = np.array([0, 16, 32, 128]) * 0.25 / 128                 # dates on the 128 steps
    kw = dict(H=0.1, eta=2.0, rho=-0.9, xi0=0.05, n_steps=128, n_paths=512)
    m = fam.rbergomi_marginals(times, GRID, rng=4, **kw)
    helpers.assert_convex_ordered(m)
    assert m.n_dates == 4 and m.weights[0, I_ONE] == 1.0            # today's point mass
    np.testing.assert_array_equal(m.times, times)
    np.testing.assert_array_equal(m.weights, fam.rbergomi_marginals(times, GRID, rng=4,
                                                                     **kw).weights)
    assert not np.array_equal(m.weights, fam.rbergomi_marginals(times, GRID, rng=5,
                                                                **kw).weights)
    # rho = -0.9: a left skew, more mass below 1 - 2 sd than above 1 + 2 sd
    w, sd = m.weights[-1], np.sqrt(m.weights[-1] @ (GRID - 1) ** 2)
    assert w[GRID < 1 - 2 * sd].sum() > w[GRID > 1 + 2 * sd].sum()


def test_rbergomi_without_vol_of_vol_or_correlation_is_lognormal():
    """eta = 0 and rho = 0: every path's conditional law is the lognormal of variance xi0 t, so
    the mixing estimator has no Monte Carlo error and the marginals equal the lognormal
    construction with vol sqrt(xi0) (to round-off, 1e-12)."""
    from deepquant.neural.sweep import term_structure_marginals

    times = np.linspace(0.0, 0.4, 5)
    a = fam.rbergomi_marginals(times, GRID, H=0.1, eta=0.0, rho=0.0, xi0=0.04, n_paths=64,
                               rng=1)
    b = term_structure_marginals(times, 0.2, GRID)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-12)


@pytest.mark.parametrize("kw, msg", [
    (dict(rho=1.0), "rho must be in"),
    (dict(H=0.7), "H must be in"),
    (dict(xi0=-0.01), "xi0 must be > 0"),
    (dict(eta=-1.0), "eta must be >= 0"),
    (dict(n_paths=1000), "n_paths must be a power of 2"),
    (dict(n_steps=2), "n_steps must be an integer >= N"),
    (dict(n_steps=7), "times must be multiples"),
    (dict(times=[0.0, 0.2, 0.1]), "times must be increasing"),
])
def test_rbergomi_bad_parameters_name_the_argument(kw, msg):
    kw = {"times": [0.0, 0.1, 0.2, 0.3], "n_paths": 16, **kw}
    with pytest.raises(ValueError, match=msg):
        fam.rbergomi_marginals(kw.pop("times"), GRID, **kw)


def test_scaled_marginals_have_narrower_exact_supports():
    m = nd.build_marginals(nd.instance_spec(0, 2, families=("svi",), n_choices=(5,)), GRID)
    sd = np.sqrt(m.weights @ (GRID - 1) ** 2)
    for scale in (0.3, 0.6, 1.0, 1.3):
        s = fam.scaled_marginals(m, scale)
        helpers.assert_convex_ordered(s)
        live = np.flatnonzero(s.weights[-1] > 0)
        # the standard deviations scale by s (up to the grid and the cut tails: 1 grid step)
        np.testing.assert_allclose(np.sqrt(s.weights @ (GRID - 1) ** 2), scale * sd,
                                   atol=GRID[1] - GRID[0])
        if scale < 1:
            assert live[0] > 0 and live[-1] < GRID.size - 1           # a sub-range
            assert np.all(s.weights[:, :live[0]] == 0) and np.all(s.weights[:, live[-1] + 1:] == 0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        fam.scaled_marginals(m, 0.0)
    with pytest.raises(ValueError, match="tail must be in"):
        fam.scaled_marginals(m, 0.5, tail=0.1)


def test_support_scale_keeps_the_family_draws():
    for i in range(6):
        a = nd.instance_spec(i, 3, families=nd.ALL_FAMILIES)
        b = nd.instance_spec(i, 3, families=nd.ALL_FAMILIES, support_scale=(0.2, 0.9))
        assert {k: v for k, v in b.params.items() if k != "support_scale"} == a.params
        assert 0.2 <= b.params["support_scale"] <= 0.9
    spec = nd.instance_spec(0, 3, families=("gbm",), support_scale=(0.4, 0.4))
    m = nd.build_marginals(spec, GRID)
    helpers.assert_convex_ordered(m)
    assert m.weights[-1, 0] == 0.0 and m.weights[-1, -1] == 0.0
    with pytest.raises(ValueError, match="support_scale must be"):
        nd.instance_spec(0, 3, support_scale=(0.0, 1.0))


def test_rbergomi_spec_dates_and_parameter_ranges():
    for i, n in enumerate((1, 2, 63)):
        spec = nd.instance_spec(i, 8, families=("rbergomi",), n_choices=(n,))
        assert spec == nd.instance_spec(i, 8, families=("rbergomi",), n_choices=(n,))
        p = spec.params
        t = spec.times
        assert t.size == n + 1 and t[0] == 0 and np.all(np.diff(t) > 0)
        assert abs(t[-1] - spec.maturity) < 1e-12
        steps = t / t[-1] * p["n_steps"]
        np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
        assert 0.05 <= p["H"] <= 0.2 and 1 <= p["eta"] <= 2.5
        assert -0.95 <= p["rho"] <= -0.5 and 0.01 <= p["xi0"] <= 0.09


def test_generate_takes_one_period_and_the_network_maximum(tmp_path):
    """N = 1 and N = 63 (64 dates, ``ModelConfig.max_dates``) are valid training instances;
    the rbergomi family's records carry its dates."""
    out = tmp_path / "n.h5"
    r = CliRunner().invoke(main, ["generate", "--num", "2", "--out", str(out), "--backend",
                                  "serial", "--n-choices", "1", "--families", "gbm,rbergomi",
                                  "--support-scale", "0.5,1", "--json"])
    assert r.exit_code == 0, r.output
    recs, _, attrs = nd.read_dataset(out)
    assert attrs["support_scale"] == "0.5,1"
    for rec in recs:
        assert rec["n_periods"] == 1 and rec["weights"].shape == (2, GRID.size)
        assert rec["success"] and rec["marginal_error"] < 1e-8
    assert nd.validate_dataset(out).ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nd.generate_dataset(tmp_path / "m.h5", 1, backend="serial", n_choices=(63,))
    rec = nd.read_dataset(tmp_path / "m.h5")[0][0]
    assert rec["weights"].shape == (64, GRID.size) and rec["success"]
    r = CliRunner().invoke(main, ["generate", "--num", "1", "--out", str(tmp_path / "x.h5"),
                                  "--support-scale", "0.5"])
    assert r.exit_code != 0 and "--support-scale must be LO,HI" in r.output


def test_evaluate_table_has_the_rbergomi_family(tmp_path):
    out = tmp_path / "t.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nd.generate_dataset(out, 1, seed=4, backend="serial", n_choices=(2,),
                            families=("rbergomi",))
    r = CliRunner().invoke(main, ["evaluate", "--test", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["family"]: row for row in json.loads(r.output)["families"]}
    assert rows["rbergomi"]["held_out"] and rows["rbergomi"]["n"] == 1
    assert np.isfinite(rows["rbergomi"]["mean_err_pct"])
