"""Black–Scholes and Black (1976) formulas: price, implied volatility, vega, delta, gamma.

The one place in the library where these formulas are written. Everything is vectorised: the
arguments broadcast against each other (numpy rules) and the result has the broadcast shape.

Black (1976) on a forward F with discount factor D, strike K, volatility sigma and time t:

    s = sigma sqrt(t),   d1 = (ln(F / K) + s^2 / 2) / s,   d2 = d1 - s,
    call = D (F N(d1) - K N(d2)),   put = D (K N(-d2) - F N(-d1)),

with N the standard normal distribution function. Black–Scholes on a spot S with a continuously
compounded rate r and dividend yield q is the same formula with F = S e^{(r - q) t} and
D = e^{-r t}. References: Black, "The pricing of commodity contracts", J. Financial Economics 3
(1976); Hull, *Options, Futures and Other Derivatives*, §§15.8, 18.8 and ch. 19 (greeks).

Limits handled exactly: s = 0 (zero volatility or zero time) gives the discounted intrinsic value
D (F - K)^+ (call) or D (K - F)^+ (put); a strike K <= 0 gives the call D (F - K) and the put 0.

Implied volatility inverts the price with a bracketed root finder (Chandrupatla's method,
``scipy.optimize.elementwise.find_root``), all quotes at once; the price is monotone in sigma, so
a bracket [min_vol, max_vol] that contains the root gives it to machine precision.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = [
    "black_d1",
    "black_delta",
    "black_gamma",
    "black_price",
    "black_vega",
    "bs_price",
    "implied_vol",
]

_SQRT_2PI = float(np.sqrt(2.0 * np.pi))


def _pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / _SQRT_2PI


def black_d1(forward, strike, sigma, t) -> np.ndarray:
    """d1 = (ln(F / K) + sigma^2 t / 2) / (sigma sqrt t); +-inf or NaN where sigma sqrt t = 0."""
    f, k = np.asarray(forward, float), np.asarray(strike, float)
    s = np.asarray(sigma, float) * np.sqrt(np.asarray(t, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.log(f / k) + 0.5 * s * s) / s


def black_price(forward, strike, sigma, t, *, is_call=True, discount=1.0) -> np.ndarray:
    """Black (1976) price D E[(F_T - K)^+] (call) or D E[(K - F_T)^+] (put).

    Parameters
    ----------
    forward, strike, sigma, t : array_like
        F, K, the volatility and the year fraction; they broadcast. With ``forward=1`` and
        ``t=1`` the strike is the moneyness K / F and ``sigma`` the total volatility
        sigma sqrt(T): the undiscounted price of a payoff on X = S_T / F.
    is_call : bool or array_like of bool
        Call where True, put where False.
    discount : array_like
        D, the discount factor to the payment date.

    Returns
    -------
    ndarray
        Broadcast shape of the arguments.
    """
    f, k = np.asarray(forward, float), np.asarray(strike, float)
    s = np.asarray(sigma, float) * np.sqrt(np.asarray(t, float))
    is_call = np.asarray(is_call, bool)
    f, k, s, is_call = np.broadcast_arrays(f, k, s, is_call)
    live = (s > 0) & (k > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.where(live, (np.log(f / np.where(live, k, 1.0)) + 0.5 * s * s)
                      / np.where(live, s, 1.0), 0.0)
    d2 = d1 - s
    calls = bool(is_call.any())  # the side(s) to evaluate (both only for a mixed is_call)
    puts = not (calls and bool(is_call.all()))
    if calls:
        call = np.where(live, f * ndtr(d1) - k * ndtr(d2), np.maximum(f - k, 0.0))
        call = np.where(k <= 0, f - k, call)
    if puts:
        put = np.where(live, k * ndtr(-d2) - f * ndtr(-d1), np.maximum(k - f, 0.0))
        put = np.where(k <= 0, 0.0, put)
    price = np.where(is_call, call, put) if calls and puts else call if calls else put
    return np.asarray(discount, float) * price


def bs_price(spot, strike, sigma, t, *, rate=0.0, dividend_yield=0.0, is_call=True
             ) -> np.ndarray:
    """Black–Scholes price of a European call or put on a spot: Black (1976) with
    F = S e^{(r - q) t} and D = e^{-r t}; t = 0 gives the intrinsic value. Shapes broadcast."""
    t = np.asarray(t, float)
    r = np.asarray(rate, float)
    fwd = np.asarray(spot, float) * np.exp((r - np.asarray(dividend_yield, float)) * t)
    return black_price(fwd, strike, sigma, t, is_call=is_call, discount=np.exp(-r * t))


def black_vega(forward, strike, sigma, t, *, discount=1.0) -> np.ndarray:
    """Vega d price / d sigma = D F n(d1) sqrt(t) (the same for a call and a put)."""
    d1 = black_d1(forward, strike, sigma, t)
    out = np.asarray(discount, float) * np.asarray(forward, float) * _pdf(d1) \
        * np.sqrt(np.asarray(t, float))
    return np.where(np.isfinite(d1), out, 0.0)


def black_delta(forward, strike, sigma, t, *, is_call=True, discount=1.0) -> np.ndarray:
    """Forward delta d price / d F = D N(d1) (call) or D (N(d1) - 1) (put).

    The spot delta of Black–Scholes with a dividend yield q is e^{-q t} N(d1) (call), which is
    this value times F / S.
    """
    n1 = ndtr(black_d1(forward, strike, sigma, t))
    return np.asarray(discount, float) * np.where(np.asarray(is_call, bool), n1, n1 - 1.0)


def black_gamma(forward, strike, sigma, t, *, discount=1.0) -> np.ndarray:
    """Forward gamma d^2 price / d F^2 = D n(d1) / (F sigma sqrt t) (call and put).

    The spot gamma is this value times (F / S)^2, i.e. e^{-q t} n(d1) / (S sigma sqrt t).
    """
    d1 = black_d1(forward, strike, sigma, t)
    s = np.asarray(sigma, float) * np.sqrt(np.asarray(t, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(discount, float) * _pdf(d1) / (np.asarray(forward, float) * s)
    return np.where(np.isfinite(d1), out, 0.0)


def _normalized_excess(s: np.ndarray, k: np.ndarray, target: np.ndarray, call: np.ndarray
                       ) -> np.ndarray:
    """Undiscounted price on a unit forward at total vol ``s`` minus ``target`` (root function);
    ``call`` is 1.0 for a call, 0.0 for a put (each priced by its own formula, so a deep
    out-of-the-money put keeps its relative precision)."""
    d1 = (-np.log(k) + 0.5 * s * s) / s
    d2 = d1 - s
    return np.where(call > 0.5, ndtr(d1) - k * ndtr(d2), k * ndtr(-d2) - ndtr(-d1)) - target


def implied_vol(price, forward, strike, t, *, is_call=True, discount=1.0,
                min_vol: float = 1e-8, max_vol: float = 5.0) -> np.ndarray:
    """Black implied volatility: the sigma with ``black_price(F, K, sigma, t) == price``.

    Parameters
    ----------
    price : array_like
        Option prices (discounted, in the units of ``forward`` and ``strike``).
    forward, strike, t, is_call, discount : array_like
        As in ``black_price``; they broadcast with ``price``.
    min_vol, max_vol : float
        The bracket searched for sigma.

    Returns
    -------
    ndarray
        sigma, or NaN where no volatility in [min_vol, max_vol] reproduces the price: at or
        below the intrinsic value, at or above the no-arbitrage bound (D F for a call, D K for a
        put), not finite, or outside the bracket. Accuracy: the root is bracketed to a few units
        in the last place of sigma sqrt(t).
    """
    if not (0 <= min_vol < max_vol):
        raise ValueError(f"need 0 <= min_vol < max_vol, got min_vol={min_vol!r}, "
                         f"max_vol={max_vol!r}")
    p, f, k, t, is_call, d = np.broadcast_arrays(
        np.asarray(price, float), np.asarray(forward, float), np.asarray(strike, float),
        np.asarray(t, float), np.asarray(is_call, bool), np.asarray(discount, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        kn = k / f
        pn = p / (d * f)
        rt = np.sqrt(t)
    intrinsic = np.where(is_call, np.maximum(1.0 - kn, 0.0), np.maximum(kn - 1.0, 0.0))
    bound = np.where(is_call, 1.0, kn)
    ok = (np.isfinite(pn) & np.isfinite(kn) & (kn > 0) & (t > 0) & (d > 0) & (f > 0)
          & (pn > intrinsic) & (pn < bound))
    out = np.full(p.shape, np.nan)
    if not ok.any():
        return out
    kk, pp, rr = kn[ok], pn[ok], rt[ok]
    cc = is_call[ok].astype(float)
    lo, hi = np.maximum(min_vol * rr, 1e-300), max_vol * rr
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = (_normalized_excess(lo, kk, pp, cc) < 0) & (_normalized_excess(hi, kk, pp, cc) > 0)
    res_x = np.full(kk.shape, np.nan)
    if inside.any():
        res = _find_root(_normalized_excess, (lo[inside], hi[inside]),
                         args=(kk[inside], pp[inside], cc[inside]))
        res_x[inside] = np.where(res.success, res.x, np.nan)
    out[ok] = res_x / rr
    return out


def _find_root(f, bracket, args):
    from scipy.optimize import elementwise

    return elementwise.find_root(f, bracket, args=args)
