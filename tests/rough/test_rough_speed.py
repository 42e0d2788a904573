"""The speed work keeps the estimator: a small coupled run equals the values recorded with the
code before it (``data/rbergomi_speed_reference.json``, its source names the commit), and the
compiled kernels equal the numpy expressions they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from deepquant.rough import RoughBergomi, preset_pricer
from deepquant.rough.extrapolate import price_converged
from deepquant.rough.kernels import bs_put_call, clipped_normals, shifted_normals


def test_small_coupled_run_matches_reference(rough_data):
    ref = rough_data("rbergomi_speed_reference.json")
    case = ref["case"]
    pricer = preset_pricer(case["preset"], **case["overrides"])
    res = price_converged(RoughBergomi(), case["strike"], pricer=pricer,
                          steps=tuple(case["steps"]), coupled=case["coupled"], rng=case["seed"])
    # the arithmetic is unchanged (same operations in the same order): equal to rounding.
    # 1e-10 of the price leaves room for a BLAS or numpy that sums in another order (numpy 2.4
    # moves the upper bound by 6e-10 and the discretisation error, a difference of prices, by
    # 3e-10: 3e-9 of itself)
    tol = 1e-10 * abs(ref["value"])
    for key in ("value", "lower", "upper", "stderr", "discretisation_error",
                "discretisation_stderr"):
        assert getattr(res, key) == pytest.approx(ref[key], rel=1e-10, abs=tol), key
    for run, want in zip(res.runs, ref["runs"], strict=True):
        for key, v in want.items():
            assert getattr(run, key) == pytest.approx(v, rel=1e-10, abs=tol), key


@pytest.mark.parametrize("put", [True, False])
def test_bs_kernel_is_the_numpy_expression(put):
    rng = np.random.default_rng(3)
    S = 100.0 * np.exp(0.3 * rng.standard_normal((257, 1)))
    dk = np.exp(-0.05 * 0.25) * 100.0 * np.array([[0.7, 0.85, 1.0, 1.15]])
    sd = np.sqrt(0.25) * np.sqrt(0.09 * np.exp(rng.standard_normal((257, 1))))
    from scipy.special import ndtr

    d1 = (np.log(S) - np.log(dk)) / sd + 0.5 * sd
    d2 = d1 - sd
    want = dk * ndtr(-d2) - S * ndtr(-d1) if put else S * ndtr(d1) - dk * ndtr(d2)
    got = bs_put_call(S, np.log(S), dk, np.log(dk), sd, put=put)
    np.testing.assert_array_equal(got, want)  # bit for bit: same operations, scipy's ndtr
    got1 = bs_put_call(S[:, 0], np.log(S[:, 0]), dk[0, 2], np.log(dk[0, 2]), sd[:, 0], put=put)
    np.testing.assert_array_equal(got1, want[:, 2])


def test_shifted_normals_is_the_numpy_expression():
    rng = np.random.default_rng(5)
    base, shift = rng.random((16, 9)), rng.random((7, 9))
    u = base[None] + shift[:, None]
    u -= np.floor(u)
    want = ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))
    np.testing.assert_array_equal(shifted_normals(base, shift, 1e-12), want)


def test_signature2_matches_pysiglib():
    pysiglib = pytest.importorskip("pysiglib")
    from deepquant.rough.kernels import signature2

    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 4, 3))
    prefix = rng.standard_normal((16, 12))
    # the same sums in another order: equal to rounding (1e-13 absolute on O(10) values)
    np.testing.assert_allclose(signature2(x), pysiglib.sig(x, 2), rtol=0, atol=1e-13)
    want = pysiglib.sig_combine(np.ascontiguousarray(np.repeat(prefix, 4, axis=0)),
                                pysiglib.sig(x, 2), 3, 2)
    np.testing.assert_allclose(signature2(x, prefix, 4), want, rtol=0, atol=1e-13)


def _elementwise(f):
    """A compiled loop of the scalar kernel function ``f`` over a 1-D array."""
    from numba import njit

    @njit
    def loop(x):  # pragma: no cover - compiled
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = f(x[i])
        return out

    return loop


def test_kernels_ndtr_and_ndtri_are_scipys_bit_for_bit():
    from scipy.special import ndtr

    from deepquant.rough import kernels

    rng = np.random.default_rng(11)
    # every branch: erf (|x| < 1), erfc below and above 8, the underflow; ndtri's centre, tails
    # below and above exp(-32), the edges and the points either side of each threshold
    x = np.concatenate([s * rng.standard_normal(10**6) for s in (0.5, 2.0, 8.0, 30.0)])
    edges = np.array([0.0, -0.0, 1.0, -1.0, 2**0.5, -(2**0.5), 11.3, -11.3, 37.5, -37.5, 40.0,
                      -40.0, np.inf, -np.inf, np.nan, 1e-300])
    x = np.concatenate([x, edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
    np.testing.assert_array_equal(_elementwise(kernels._ndtr)(x), ndtr(x))
    e2 = np.exp(-2.0)
    u = np.concatenate([rng.random(10**6), np.exp(-700.0 * rng.random(10**5)),
                        1.0 - np.exp(-36.0 * rng.random(10**5))])
    edges = np.array([0.0, 1.0, 0.5, e2, 1.0 - e2, np.exp(-32.0), 1e-12, 1.0 - 1e-12, 5e-324,
                      -0.1, 1.1, np.nan])
    u = np.concatenate([u, edges, np.nextafter(edges, 1.0), np.nextafter(edges, 0.0)])
    np.testing.assert_array_equal(_elementwise(kernels._ndtri)(u), ndtri(u))
    np.testing.assert_array_equal(clipped_normals(u[:1000].reshape(10, 100), 1e-12),
                                  ndtri(np.clip(u[:1000], 1e-12, 1 - 1e-12)).reshape(10, 100))


def test_bridge_kernel_is_the_numpy_construction():
    from deepquant.rough.qmc import BrownianBridge

    rng = np.random.default_rng(13)
    for n in (1, 2, 5, 8, 96):
        bb = BrownianBridge(n, 0.01)
        z = rng.standard_normal((33, 2 * n))[:, ::2]  # strided, as driver_increments' slices
        w = np.zeros((n + 1, 33))
        for col, (tgt, lo, hi, wl, wr, std) in enumerate(bb._plan):
            w[tgt] = z[:, col] * std if hi < 0 else wl * w[lo] + wr * w[hi] + std * z[:, col]
        np.testing.assert_array_equal(bb.increments(z), np.diff(w, axis=0).T)
        assert bb.increments(z[None]).shape == (1, 33, n)


def test_coarsening_and_delta_kernels_are_the_numpy_expressions():
    from scipy.special import ndtr

    from deepquant.rough.kernels import bs_deltas, coarsen_cells

    rng = np.random.default_rng(17)
    w, wp, c = (rng.standard_normal((3, 5, 8)) for _ in range(3))
    z = rng.standard_normal((3, 5, 4))
    b, sd = (0.3, -1.2, 0.7, 2.1), 0.05
    want_c = b[0] * w[..., ::2] + b[1] * c[..., ::2] + b[2] * w[..., 1::2] + b[3] * c[..., 1::2]
    for zz, want in ((None, want_c), (z, want_c + sd * z)):
        got = coarsen_cells(w, wp, c, b, sd, zz)
        np.testing.assert_array_equal(got[0], w[..., ::2] + w[..., 1::2])
        np.testing.assert_array_equal(got[1], wp[..., ::2] + wp[..., 1::2])
        np.testing.assert_array_equal(got[2], want)
    S = 100.0 * np.exp(0.3 * rng.standard_normal((300, 2)))[:, 1]  # strided, as a path column
    fv = 0.09 * np.exp(rng.standard_normal(300))
    strikes, r, tau = np.array([70.0, 95.0, 100.0]), 0.05, 1.0 / 12
    for put in (True, False):
        out = np.empty((300, 3))
        bs_deltas(S, fv, strikes, r, tau, put=put, out=out)
        for p, k in enumerate(strikes):
            d1 = (np.log(S / k) + (r + 0.5 * fv) * tau) / np.sqrt(fv * tau)
            # the same expression; numpy's own log may round its last bit otherwise than the
            # kernel's libm (numpy 2.4 does: 3e-15 relative in one of 300)
            np.testing.assert_allclose(out[:, p], ndtr(-d1) if put else ndtr(d1), rtol=1e-13,
                                       atol=0)
