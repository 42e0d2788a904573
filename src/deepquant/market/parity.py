"""Forwards and discount factors by put–call parity, quotes in forward moneyness, and checks of
the quotes across expiries.

Put–call parity C(K) - P(K) = D (F - K) holds for European options on the same (expiry, root)
(Hull, *Options, Futures and Other Derivatives*, §11.4). Over the near-the-money strikes where
both the call and the put are two-sided, ``fit_parity`` fits y = C_mid - P_mid ≈ a + b K with
a = D F and b = -D, so D = -b and F = -a / b, with weights w = 1 / (s_C + s_P)^2 (s the bid–ask
spreads: the inverse variance of the mid difference under noise uniform in the band).

The fit is **outlier-robust**: a least-squares fit would absorb a handful of bad quotes into D
(five near-the-money calls shifted by 150 index points move D by 3%). The weighted residuals
r = sqrt(w) (y - a - b K), in units of the combined spread, of the least-squares line are checked
first: when every |r| <= 2 that line is the answer (no outlier can have moved it by more than two
spreads). Otherwise the line is refitted with the soft-L1 loss rho(z) = 2 (sqrt(1 + z) - 1)
(``scipy.optimize.least_squares``, scale 0.5: half a spread);
pairs with |r| > max(5 sigma, 2), sigma = 1.4826 median |r| (normal-consistent MAD), are then
set aside as outliers and the line is refitted by weighted least squares on the others. The
outlier strikes are reported (``ParityFit.outlier_strikes``).

Checks across expiries (``check_rates``, ``calendar_violations``):

* the implied rate r = -ln D / T must be plausible (default -5% to 25% a year) unless its
  standard error says the expiry is too short to tell; a whole expiry quoted at 0.3 times its
  prices otherwise becomes D = 0.3;
* no calendar arbitrage: at a fixed forward moneyness k = K / F the undiscounted price
  C / (D F) (equivalently the total implied variance) cannot decrease with the expiry
  (Gatheral, *The Volatility Surface*, §1). With each expiry's own parity D a uniform
  rescaling of one expiry is invisible (D absorbs it), so the check normalizes with the
  discount factor of the *common* rate (the median of the expiries' implied rates) and flags
  an expiry whose ask-implied total variance is below the previous expiry's bid-implied one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from deepquant.blackscholes import implied_vol
from deepquant.market.quotes import ChainSlice

__all__ = [
    "CalendarViolation",
    "ParityFit",
    "SliceQuotes",
    "calendar_violations",
    "check_fit_range",
    "check_rates",
    "common_rate",
    "fit_parity",
    "normalize_slice",
]

DEFAULT_RATE_RANGE = (-0.05, 0.25)
"""Annual continuously compounded rates accepted without question by ``check_rates``."""

_SOFT_L1_SCALE = 0.5     # half a combined spread: a residual inside the bid-ask band
_OUTLIER_SIGMAS = 5.0    # outliers beyond 5 robust standard deviations ...
_OUTLIER_FLOOR = 2.0     # ... and beyond 2 combined spreads (4 band half-widths)
_UNIFORM_SD = 1.0 / np.sqrt(12.0)  # sd of a residual uniform in a band one spread wide


@dataclass(frozen=True, eq=False)
class ParityFit:
    """Forward and discount factor of one slice from put–call parity, with residuals.

    Model: C_mid(K) - P_mid(K) = D (F - K) + e(K), fitted robustly (module docstring).

    Attributes
    ----------
    forward : float
        F(0, T).
    discount : float
        D(0, T).
    rate : float
        Implied continuously compounded rate r = -ln D / T.
    dividend_yield : float
        Implied carry q = r - ln(F / spot) / T (NaN without a spot).
    strikes : ndarray, shape (P,)
        Strikes of the pairs used (outliers excluded).
    residuals : ndarray, shape (P,)
        e(K) = (C_mid - P_mid) - D (F - K) at those strikes, in currency.
    weights : ndarray, shape (P,)
        Regression weights 1 / (s_C + s_P)^2.
    band_halfwidth : ndarray, shape (P,)
        (s_C + s_P) / 2: |e| above it means parity fails at the quoted bid/ask.
    rmse : float
        Weighted root-mean-square residual.
    n_outside_band : int
        Pairs with |e| > band half-width.
    outlier_strikes : ndarray, shape (O,)
        Near-the-money pairs set aside as outliers (see the module docstring).
    rate_stderr : float
        Standard error of ``rate`` from the weighted fit (residual scale floored at that of
        noise uniform in the band).
    t : float
        Year fraction of the slice.
    label : str
        The slice's label.
    """

    forward: float
    discount: float
    rate: float
    dividend_yield: float
    strikes: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    band_halfwidth: np.ndarray
    rmse: float
    n_outside_band: int
    outlier_strikes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rate_stderr: float = float("nan")
    t: float = float("nan")
    label: str = ""

    @property
    def n_pairs(self) -> int:
        return int(self.strikes.size)

    @property
    def n_outliers(self) -> int:
        return int(self.outlier_strikes.size)

    @property
    def max_abs_residual(self) -> float:
        return float(np.max(np.abs(self.residuals)))


def _robust_line(k: np.ndarray, y: np.ndarray, w: np.ndarray, k0: float
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Fit y ≈ alpha + beta (k - k0) robustly; return (alpha, beta, inlier mask, cov)."""
    sw = np.sqrt(w)
    x = k - k0
    scale = max(float(np.max(np.abs(x))), 1e-12)

    def resid(p):
        return sw * (y - p[0] - p[1] * x / scale)

    design_all = np.column_stack([np.ones_like(x), x / scale]) * sw[:, None]
    p_ls, *_ = np.linalg.lstsq(design_all, y * sw, rcond=None)
    r = resid(p_ls)
    inlier = np.ones(x.shape, bool)
    if np.max(np.abs(r)) > _OUTLIER_FLOOR:
        # some pair is off by more than the floor: fit robustly, starting from D = 1 (slope
        # -1) and the median level, which no minority of outliers can move
        start = np.array([float(np.median(y + x)), -scale])
        fit = least_squares(resid, start, loss="soft_l1", f_scale=_SOFT_L1_SCALE,
                            method="trf", x_scale="jac")
        r = resid(fit.x)
        sigma = 1.4826 * float(np.median(np.abs(r)))
        inlier = np.abs(r) <= max(_OUTLIER_SIGMAS * sigma, _OUTLIER_FLOOR)
        if inlier.sum() < 2 or np.ptp(x[inlier]) == 0:
            inlier = np.ones_like(inlier)
    design = np.column_stack([np.ones(int(inlier.sum())), x[inlier]]) * sw[inlier, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, y[inlier] * sw[inlier], rcond=None)
    rr = sw[inlier] * (y[inlier] - alpha - beta * x[inlier])
    dof = max(int(inlier.sum()) - 2, 1)
    s2 = max(float(rr @ rr) / dof, _UNIFORM_SD**2)
    try:
        cov = s2 * np.linalg.inv(design.T @ design)
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.inf)
    return float(alpha), float(beta), inlier, cov


def fit_parity(
    sl: ChainSlice,
    *,
    spot: float | None = None,
    near_fraction: float = 0.4,
    min_pairs: int = 3,
    source: str = "",
) -> ParityFit:
    """Forward F and discount D of a slice by an outlier-robust fit of put–call parity.

    Fits y_i = C_mid(K_i) - P_mid(K_i) ≈ a + b K_i over the ``near_fraction`` of two-sided pairs
    whose strikes lie nearest the money (at least ``min_pairs``), weights
    w_i = 1 / (s_C,i + s_P,i)^2, robustly (module docstring). Then D = -b, F = -a / b. The pairs
    are first chosen around ``spot`` (or the median pair strike without one), then once more
    around the fitted F.

    Parameters
    ----------
    sl : ChainSlice
    spot : float, optional
        Level around which the near-the-money pairs are first chosen.
    near_fraction : float
        Fraction of the two-sided pairs used, in (0, 1].
    min_pairs : int
        Fewest pairs to fit (at least 2).
    source : str
        File name used in error messages.

    Raises
    ------
    ValueError
        Fewer than ``min_pairs`` two-sided pairs, more outliers than inliers, or a fit with
        D <= 0 or F <= 0.
    """
    if not 0 < near_fraction <= 1:
        raise ValueError(f"near_fraction must be in (0, 1], got {near_fraction!r}")
    min_pairs = max(int(min_pairs), 2)
    both = sl.call_ok & sl.put_ok
    where = f"{source + ': ' if source else ''}slice {sl.label}"
    if both.sum() < min_pairs:
        raise ValueError(f"{where} has {int(both.sum())} strikes with a two-sided call and put; "
                         f"put-call parity needs at least {min_pairs}")
    k = sl.strikes[both]
    y = (sl.call_bid[both] + sl.call_ask[both]) / 2 - (sl.put_bid[both] + sl.put_ask[both]) / 2
    spread = (sl.call_ask[both] - sl.call_bid[both]) + (sl.put_ask[both] - sl.put_bid[both])
    # a zero spread (locked quotes) would get an infinite weight: floor it at a tenth of the median
    floor = max(0.1 * float(np.median(spread)), 1e-12)
    w_all = 1.0 / np.maximum(spread, floor) ** 2
    n_use = max(min_pairs, int(np.ceil(near_fraction * k.size)))
    center = float(spot) if spot is not None and np.isfinite(spot) else float(np.median(k))
    for _ in range(2):
        idx = np.sort(np.argsort(np.abs(k - center), kind="stable")[:n_use])
        kk, yy, ww = k[idx], y[idx], w_all[idx]
        if np.ptp(kk) == 0:
            raise ValueError(f"{where}: the near-the-money pairs share one strike; cannot fit")
        k0 = float(np.median(kk))
        alpha, beta, inl, cov = _robust_line(kk, yy, ww, k0)
        a, b = alpha - beta * k0, beta
        if not (b < 0 and a > 0):
            raise ValueError(f"{where}: parity fit gives D = {-b:.6g}, D F = {a:.6g}; "
                             "both must be positive")
        center = -a / b
    if inl.sum() < (~inl).sum():
        raise ValueError(f"{where}: put-call parity fails on {int((~inl).sum())} of "
                         f"{inl.size} near-the-money pairs; the quotes are inconsistent")
    discount, forward = float(-b), float(-a / b)
    resid = yy - (a + b * kk)
    half = spread[idx] / 2
    rmse = float(np.sqrt(np.sum(ww[inl] * resid[inl]**2) / np.sum(ww[inl])))
    rate = -np.log(discount) / sl.t
    rate_se = float(np.sqrt(cov[1, 1])) / (discount * sl.t)
    q = rate - np.log(forward / spot) / sl.t if spot is not None and np.isfinite(spot) and spot > 0 \
        else float("nan")
    return ParityFit(forward, discount, float(rate), float(q), kk[inl], resid[inl], ww[inl],
                     half[inl], rmse, int(np.sum(np.abs(resid[inl]) > half[inl])),
                     outlier_strikes=kk[~inl], rate_stderr=rate_se, t=float(sl.t),
                     label=sl.label)


# ----------------------------------------------------------------------------- moneyness
@dataclass(frozen=True, eq=False)
class SliceQuotes:
    """Two-sided quotes of one slice in forward moneyness (the calibration's input).

    Attributes
    ----------
    label : str
        ``"2023-07-21 SPX"``.
    t : float
        Year fraction to expiry.
    forward, discount : float
        F(0, t) and D(0, t) used for the normalization.
    k : ndarray, shape (Q,)
        Strikes K / F.
    is_call : ndarray of bool, shape (Q,)
    bid, ask : ndarray, shape (Q,)
        Quotes divided by D F (prices of payoffs on X = S_t / F).
    parity : ParityFit or None
        The put–call parity fit that gave F and D.
    quote_spread : float
        Seconds between the earliest and the latest quote time of the slice (merged snapshots).
    """

    label: str
    t: float
    forward: float
    discount: float
    k: np.ndarray
    is_call: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    parity: ParityFit | None = None
    quote_spread: float = 0.0

    def __post_init__(self) -> None:
        k = np.array(self.k, dtype=float, copy=True).reshape(-1)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "is_call", np.array(self.is_call, dtype=bool, copy=True))
        for name in ("bid", "ask"):
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=float, copy=True))
        for name in ("is_call", "bid", "ask"):
            if np.shape(getattr(self, name)) != k.shape:
                raise ValueError(f"SliceQuotes {self.label}: {name} has shape "
                                 f"{np.shape(getattr(self, name))}, k has {k.shape}")
        if k.size == 0:
            raise ValueError(f"SliceQuotes {self.label}: no quotes")
        if not (self.t > 0 and self.forward > 0 and self.discount > 0):
            raise ValueError(f"SliceQuotes {self.label}: t, forward, discount must be > 0, got "
                             f"{self.t!r}, {self.forward!r}, {self.discount!r}")
        bid, ask = np.asarray(self.bid, float), np.asarray(self.ask, float)
        if np.any(~np.isfinite(bid)) or np.any(~np.isfinite(ask)) or np.any(bid > ask):
            i = int(np.flatnonzero(~(np.isfinite(bid) & np.isfinite(ask) & (bid <= ask)))[0])
            raise ValueError(f"SliceQuotes {self.label}: quote {i} at k={k[i]:.6g} has "
                             f"bid {bid[i]!r} > ask {ask[i]!r} or is not finite")
        if np.any(k <= 0):
            raise ValueError(f"SliceQuotes {self.label}: strikes must be > 0")

    @property
    def n(self) -> int:
        return int(self.k.size)

    @property
    def half_spread(self) -> np.ndarray:
        """(ask - bid) / 2, shape (Q,)."""
        return (np.asarray(self.ask) - np.asarray(self.bid)) / 2.0

    def atm_total_vol(self) -> float:
        """ATM total volatility sigma sqrt(t): Black implied total vol of the out-of-the-money
        mid quote whose strike is nearest k = 1 (0.2 sqrt(t) if it has none).
        """
        mid = (np.asarray(self.bid) + np.asarray(self.ask)) / 2
        otm = np.where(self.is_call, self.k >= 1, self.k <= 1)
        idx = np.flatnonzero(otm) if np.any(otm) else np.arange(self.n)
        i = int(idx[np.argmin(np.abs(np.log(self.k[idx])))])
        v = implied_vol(mid[i], 1.0, self.k[i], 1.0, is_call=bool(self.is_call[i]))
        return float(v) if np.isfinite(v) and v > 0 else 0.2 * np.sqrt(self.t)



def check_fit_range(fit_range) -> tuple[float, float]:
    """``fit_range`` as ``(lo, hi)`` with 0 <= lo < hi (``hi`` may be inf); a ``TypeError`` or
    ``ValueError`` naming it otherwise (NaN included)."""
    try:
        lo, hi = (float(v) for v in fit_range)
    except (TypeError, ValueError):
        raise TypeError(f"fit_range must be two numbers (lo, hi), got {fit_range!r}") from None
    if not 0 <= lo < hi:
        raise ValueError(f"fit_range must satisfy 0 <= lo < hi, got {fit_range!r}")
    return lo, hi


def normalize_slice(
    sl: ChainSlice,
    parity: ParityFit,
    *,
    fit_range: tuple[float, float] = (0.0, np.inf),
) -> SliceQuotes:
    """Two-sided quotes of ``sl`` in forward moneyness: k = K/F, prices / (D F).

    Only quotes with ``fit_range[0] <= k <= fit_range[1]`` are kept. Calls and puts are both kept
    (they carry different spreads; parity ties them through the mean-1 constraint).
    """
    f, d = parity.forward, parity.discount
    ks, cb, ca, pb, pa = sl.strikes, sl.call_bid, sl.call_ask, sl.put_bid, sl.put_ask
    k = np.concatenate([ks[sl.call_ok], ks[sl.put_ok]]) / f
    is_call = np.concatenate([np.ones(int(sl.call_ok.sum()), bool),
                              np.zeros(int(sl.put_ok.sum()), bool)])
    bid = np.concatenate([cb[sl.call_ok], pb[sl.put_ok]]) / (d * f)
    ask = np.concatenate([ca[sl.call_ok], pa[sl.put_ok]]) / (d * f)
    keep = (k >= fit_range[0]) & (k <= fit_range[1])
    if not keep.any():
        raise ValueError(f"slice {sl.label} has no two-sided quotes with K/F in "
                         f"[{fit_range[0]:g}, {fit_range[1]:g}]")
    order = np.lexsort((~is_call[keep], k[keep]))
    return SliceQuotes(sl.label, sl.t, f, d, k[keep][order], is_call[keep][order],
                       bid[keep][order], ask[keep][order], parity, sl.quote_spread)



# ----------------------------------------------------------------------------- checks
def common_rate(fits: Sequence[ParityFit]) -> float:
    """The median of the expiries' implied rates (robust to a few bad expiries)."""
    return float(np.median([f.rate for f in fits]))


def check_rates(fits: Sequence[ParityFit], *,
                rate_range: tuple[float, float] = DEFAULT_RATE_RANGE) -> list[str]:
    """Messages for the expiries whose implied annual rate is implausible.

    An expiry is flagged when its rate r = -ln D / T lies outside ``rate_range`` by more than
    three standard errors (a one-day expiry can imply 40% a year from noise alone).
    """
    lo, hi = rate_range
    if not lo < hi:
        raise ValueError(f"rate_range must be (low, high) with low < high, got {rate_range!r}")
    out = []
    for f in fits:
        se = f.rate_stderr if np.isfinite(f.rate_stderr) else 0.0
        if f.rate + 3 * se < lo or f.rate - 3 * se > hi:
            out.append(f"{f.label}: put-call parity implies D = {f.discount:.4g} over "
                       f"{365 * f.t:.0f} days, an annual rate of {100 * f.rate:.1f}% "
                       f"(standard error {100 * se:.2g}%), outside the plausible "
                       f"{100 * lo:g}% to {100 * hi:g}%")
    return out


@dataclass(frozen=True)
class CalendarViolation:
    """Calendar arbitrage between two consecutive expiries at one forward moneyness k.

    ``earlier_bid_variance`` > ``later_ask_variance``: the later expiry's option at k is worth
    less, even at its ask, than the earlier one at its bid (total implied variances, undiscounted
    prices normalized with the common rate's discount factor).
    """

    earlier: str
    later: str
    k: float
    earlier_bid_variance: float
    later_ask_variance: float

    def message(self) -> str:
        return (f"calendar arbitrage: {self.later} at K/F = {self.k:.3f} has ask-implied total "
                f"variance {self.later_ask_variance:.3g}, below {self.earlier}'s bid-implied "
                f"{self.earlier_bid_variance:.3g}")


def _otm_total_variance(sl: ChainSlice, fit: ParityFit, discount: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log k, bid total variance, ask total variance) of the out-of-the-money quotes."""
    f = fit.forward
    k = sl.strikes / f
    use_call = k >= 1.0
    bid = np.where(use_call, sl.call_bid, sl.put_bid) / (discount * f)
    ask = np.where(use_call, sl.call_ask, sl.put_ask) / (discount * f)
    ok = np.isfinite(bid) & np.isfinite(ask)
    v_b = implied_vol(bid[ok], 1.0, k[ok], 1.0, is_call=use_call[ok], max_vol=10.0)
    v_a = implied_vol(ask[ok], 1.0, k[ok], 1.0, is_call=use_call[ok], max_vol=10.0)
    return np.log(k[ok]), v_b**2, v_a**2


def calendar_violations(slices: Sequence[ChainSlice], fits: Sequence[ParityFit], *,
                        rate: float | None = None, rel_tol: float = 0.02
                        ) -> list[CalendarViolation]:
    """The worst calendar arbitrage per pair of consecutive expiries (sorted by time).

    Each expiry's out-of-the-money quotes are normalized to a unit forward with the discount
    factor e^{-rate t} (``rate`` defaults to ``common_rate(fits)``). A pair is flagged when, at
    a quoted k of the later expiry inside the earlier one's quoted range, the later ask-implied
    total variance is below (1 - ``rel_tol``) times the earlier bid-implied one (interpolated
    linearly in log k; ``rel_tol`` absorbs the interpolation error between strikes).
    """
    if len(slices) != len(fits):
        raise ValueError(f"slices and fits differ in length: {len(slices)} and {len(fits)}")
    r = common_rate(fits) if rate is None else float(rate)
    order = np.argsort([s.t for s in slices], kind="stable")
    curves = [(slices[i].label,
               *_otm_total_variance(slices[i], fits[i], float(np.exp(-r * slices[i].t))))
              for i in order]
    out = []
    for (lab0, x0, b0, _), (lab1, x1, _, a1) in zip(curves[:-1], curves[1:]):
        good0 = np.isfinite(b0)
        if good0.sum() < 2:
            continue
        xs, bs = x0[good0], b0[good0]
        inside = np.isfinite(a1) & (x1 >= xs.min()) & (x1 <= xs.max())
        if not inside.any():
            continue
        bid_here = np.interp(x1[inside], xs, bs)
        gap = (1 - rel_tol) * bid_here - a1[inside]
        j = int(np.argmax(gap))
        if gap[j] > 0:
            out.append(CalendarViolation(lab0, lab1, float(np.exp(x1[inside][j])),
                                         float(bid_here[j]), float(a1[inside][j])))
    return out
