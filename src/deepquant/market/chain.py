"""Synthetic Cboe-style option chains: the built-in market data of deep-quant.

``synthetic_chain()`` prices calls and puts on a grid of expiries and strikes under a model of
``deepquant.market.synthetic`` (default Heston with the DESIGN §3 parameters) and quotes them like
an index option chain:

- prices: C = D F c(K / F), P = C - D (F - K), with F = S e^{(r - q) T}, D = e^{-r T} and c the
  model's undiscounted forward-moneyness call price; T = ACT/365 on the elapsed time from the
  quote instant (16:00 ET) to the PM settlement instant (16:00 ET on the expiry), time-zone aware
  in America/New_York (a daylight-saving change in between counts its hour), the convention of
  ``deepquant.market.quotes.year_fraction``;
- spreads widen away from the money and with vega:
  spread = max(2 ticks, 0.003 price + s_vol vega), s_vol = 0.001 (1 + 0.5 |ln(K/F)| / (0.2 sqrt T)),
  with vega = D F n(d1) sqrt T at the model's own Black volatility;
- mids are jittered by at most a quarter of the spread (uniform, from ``seed``), bids rounded
  down and asks up to the tick (0.05 below $3.00, 0.10 from $3.00, as for SPX), so every quote
  brackets the model price: bid <= price <= ask, and the chain is free of static arbitrage up
  to the spread by construction;
- a bid under one tick is shown as 0 (no bid), as Cboe does for far out-of-the-money strikes.

Prices scale with ``spot`` and the ticks do not: below some spot (about 10 for the default
models and expiries) the bids of an expiry fall under one tick at almost every strike, and the
chain degenerates (every bid 0, no implied volatility). ``synthetic_chain`` refuses such a spot:
an expiry needs ``deepquant.market.quotes.MIN_PAIRS`` strikes where the call and the put both
have a bid, the least a chain loader can fit put-call parity on, and a spot that leaves one
with fewer (where a larger spot would not) is an error that states the least spot enough for
every expiry.

``SyntheticChain.to_csv`` writes the *normalized* long format of
``shared/data/spx_20230609/spx_options_normalized.csv`` (same column names, one row per contract),
followed by ``rate``, ``dividend_yield``, ``t_years`` and ``model_price``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from deepquant.atomic import write_text
from deepquant.blackscholes import black_delta, black_gamma, black_vega, implied_vol
from deepquant.market.quotes import MIN_PAIRS
from deepquant.market.synthetic import ModelName, ModelParams, model_params
from deepquant.seeds import as_generator

__all__ = ["SyntheticChain", "synthetic_chain", "default_expiries", "NORMALIZED_COLUMNS",
           "EXTRA_COLUMNS", "tick_size"]

NORMALIZED_COLUMNS = (
    "quote_date", "quote_time_et", "underlying", "root", "settlement", "spot", "spot_bid",
    "spot_ask", "expiry", "strike", "type", "bid", "ask", "mid", "iv", "open_interest", "last",
    "net_change", "volume", "delta", "gamma", "option_symbol", "source_file",
)
"""Columns of the normalized Cboe chain (shared/data/spx_20230609), in order."""

EXTRA_COLUMNS = ("rate", "dividend_yield", "t_years", "model_price")

MAX_SPOT = 1e12
"""Largest ``spot`` of ``synthetic_chain``: its quotes are rounded to cents on SPX ticks, which
a float holds exactly only below 2^53 / 100 (about 9e13), and strikes reach 3 forwards. Far
beyond it the bids overflowed (``spot=1e300`` wrote bids of inf) and then the forward itself
(``spot=1e308`` ended in numpy's "Maximum allowed size exceeded" sizing the strike list)."""
"""Columns appended after ``NORMALIZED_COLUMNS``: the chain's inputs and the exact model price."""

QUOTE_DTYPE = np.dtype([
    ("expiry", "U10"), ("t", "f8"), ("strike", "f8"), ("type", "U1"), ("bid", "f8"),
    ("ask", "f8"), ("mid", "f8"), ("model_price", "f8"), ("iv", "f8"), ("delta", "f8"),
    ("gamma", "f8"), ("forward", "f8"), ("discount", "f8"), ("open_interest", "i8"),
    ("volume", "i8"),
])


_EASTERN = ZoneInfo("America/New_York")


def _year_fraction(quote_date: dt.date, quote_time: str, expiry: dt.date) -> float:
    """ACT/365 on elapsed time from the quote instant to 16:00 ET on ``expiry`` (PM settlement)."""
    hh, mm = (int(v) for v in quote_time.split(":"))
    start = dt.datetime.combine(quote_date, dt.time(hh, mm), tzinfo=_EASTERN)
    end = dt.datetime.combine(expiry, dt.time(16, 0), tzinfo=_EASTERN)
    return (end.astimezone(dt.UTC) - start.astimezone(dt.UTC)).total_seconds() / (365.0 * 86400.0)


def tick_size(price: np.ndarray | float) -> np.ndarray:
    """SPX tick: 0.05 for prices below 3.00, 0.10 from 3.00 on."""
    return np.where(np.asarray(price) < 3.0, 0.05, 0.10)


def _third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def default_expiries(quote_date: dt.date, *, monthly: int = 6, horizon_months: int = 24
                     ) -> list[dt.date]:
    """Third Fridays of the next ``monthly`` months, then quarterly (Mar/Jun/Sep/Dec) ones up to
    ``horizon_months`` months after ``quote_date``; sorted, all after the quote date."""
    out: list[dt.date] = []
    for i in range(0, horizon_months + 1):
        y, m = divmod(quote_date.month - 1 + i, 12)
        d = _third_friday(quote_date.year + y, m + 1)
        if d <= quote_date:
            continue
        months_ahead = (d.year - quote_date.year) * 12 + d.month - quote_date.month
        if len(out) < monthly or (d.month % 3 == 0 and months_ahead <= horizon_months):
            out.append(d)
    return sorted(set(out))


@dataclass(frozen=True, eq=False)
class SyntheticChain:
    """A quotes table at one quote time: one row per (expiry, strike, type).

    Attributes
    ----------
    quotes : numpy structured array, shape (R,)
        Fields ``expiry`` (ISO date), ``t`` (years), ``strike``, ``type`` ('C'/'P'), ``bid``,
        ``ask``, ``mid``, ``model_price`` (exact model price), ``iv`` (Black vol of the mid, NaN
        without a bid), ``delta``, ``gamma`` (at ``iv``), ``forward``, ``discount``,
        ``open_interest``, ``volume``; sorted by expiry, type ('C' first), strike.
    quote_date, quote_time : the quote timestamp (US/Eastern).
    spot, rate, dividend_yield : float
        Underlying level, continuously compounded rate and dividend yield.
    model : str
        Name of the generating model; ``params`` its parameter dataclass; ``seed`` the jitter seed.
    underlying, root, settlement : str
        Labels written to the CSV (settlement 'PM': expiry at 16:00 ET).
    """

    quotes: np.ndarray
    _: KW_ONLY
    quote_date: dt.date
    quote_time: str = "16:00"
    spot: float
    rate: float
    dividend_yield: float
    model: str
    params: ModelParams
    seed: int | None
    underlying: str = "SYN"
    root: str = "SYN"
    settlement: str = "PM"
    source: str = field(default="deepquant.market.chain.synthetic_chain")

    def __len__(self) -> int:
        return int(self.quotes.shape[0])

    @property
    def expiries(self) -> list[str]:
        """Distinct expiries (ISO dates), increasing."""
        return sorted(set(self.quotes["expiry"].tolist()))

    @property
    def times(self) -> np.ndarray:
        """Year fractions of the expiries, shape (n_expiries,)."""
        return np.array([self.quotes["t"][self.quotes["expiry"] == e][0] for e in self.expiries])

    @property
    def forwards(self) -> np.ndarray:
        """Forwards F(0, T) = S e^{(r - q) T} of the expiries, shape (n_expiries,)."""
        return self.spot * np.exp((self.rate - self.dividend_yield) * self.times)

    @property
    def discounts(self) -> np.ndarray:
        """Discount factors e^{-r T} of the expiries, shape (n_expiries,)."""
        return np.exp(-self.rate * self.times)

    def rows(self) -> list[dict[str, str]]:
        """The CSV rows as dictionaries of strings (``NORMALIZED_COLUMNS + EXTRA_COLUMNS``)."""
        q = self.quotes
        spot_half = max(0.01, round(1e-4 * self.spot, 2))
        out = []
        qd = self.quote_date.isoformat()
        for r in q:
            expiry = dt.date.fromisoformat(str(r["expiry"]))
            strike = float(r["strike"])
            has_iv = bool(np.isfinite(r["iv"]))
            out.append({
                "quote_date": qd,
                "quote_time_et": self.quote_time,
                "underlying": self.underlying,
                "root": self.root,
                "settlement": self.settlement,
                "spot": f"{self.spot:.4f}",
                "spot_bid": f"{self.spot - spot_half:.4f}",
                "spot_ask": f"{self.spot + spot_half:.4f}",
                "expiry": expiry.isoformat(),
                "strike": f"{strike:g}",
                "type": str(r["type"]),
                "bid": f"{r['bid']:.2f}",
                "ask": f"{r['ask']:.2f}",
                "mid": f"{r['mid']:.3f}",
                "iv": f"{r['iv']:.6f}" if has_iv else "",
                "open_interest": str(int(r["open_interest"])),
                "last": "0",
                "net_change": "0",
                "volume": str(int(r["volume"])),
                "delta": f"{r['delta']:.6f}" if has_iv else "",
                "gamma": f"{r['gamma']:.8f}" if has_iv else "",
                "option_symbol": (f"{self.root}{expiry:%y%m%d}{r['type']}"
                                  f"{int(round(strike * 1000)):08d}"),
                "source_file": f"{self.source}(model={self.model}, seed={self.seed})",
                "rate": f"{self.rate:.10g}",
                "dividend_yield": f"{self.dividend_yield:.10g}",
                "t_years": f"{r['t']:.10g}",
                "model_price": f"{r['model_price']:.10g}",
            })
        return out

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the chain in the normalized long format (atomically); returns the path."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(NORMALIZED_COLUMNS + EXTRA_COLUMNS),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return write_text(path, buf.getvalue())

    def summary(self) -> list[dict[str, float | int | str]]:
        """One dictionary per expiry: T, forward, strike range, counts and ATM quotes."""
        out = []
        for e, t, f in zip(self.expiries, self.times, self.forwards):
            sl = self.quotes[self.quotes["expiry"] == e]
            calls = sl[sl["type"] == "C"]
            atm = calls[int(np.argmin(np.abs(calls["strike"] - f)))]
            out.append({
                "expiry": e, "t": float(t), "forward": float(f),
                "strike_min": float(sl["strike"].min()), "strike_max": float(sl["strike"].max()),
                "n_quotes": int(sl.shape[0]), "n_two_sided": int(np.sum(sl["bid"] > 0)),
                "atm_strike": float(atm["strike"]), "atm_call_bid": float(atm["bid"]),
                "atm_call_ask": float(atm["ask"]), "atm_iv": float(atm["iv"]),
            })
        return out


def _spot_for_a_bid(spot: float, price: np.ndarray, vega_part: np.ndarray) -> np.ndarray:
    """The spot from which a contract priced ``price`` at ``spot`` (vega part of its spread
    ``vega_part``) has a bid of at least one tick whatever its jitter (module docstring).

    At spot S the price and the vega part are S / spot times theirs; the bid is at least one
    tick (0.05) when the lowest jittered mid less half the spread, price - 0.75 spread, is:
    with spread = max(0.1, 0.003 price + vega part) that needs S price / spot >= 0.125 and
    S (price - 0.75 (0.003 price + vega part)) / spot >= 0.05 (inf where the latter never holds).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        room = price - 0.75 * (0.003 * price + vega_part)
        need = np.maximum(0.125 / price, np.where(room > 0, 0.05 / room, np.inf))
    return spot * np.where(price > 0, need, np.inf)


def _strike_step(spot: float, t: float) -> float:
    """A round strike spacing near 0.5% (T < 0.25), 1% (T < 1) or 2% of spot."""
    target = spot * (0.005 if t < 0.25 else 0.01 if t < 1.0 else 0.02)
    nice = np.array([1, 2, 2.5, 5, 10]) * 10.0 ** np.floor(np.log10(target))
    return float(nice[np.argmin(np.abs(nice - target))])


def synthetic_chain(
    model: ModelName | str = "heston",
    *,
    seed: int | None = 0,
    quote_date: dt.date | str = "2024-01-02",
    spot: float = 4750.0,
    rate: float = 0.045,
    dividend_yield: float = 0.015,
    expiries: list[dt.date | str] | None = None,
    n_sd: float = 4.0,
    params: dict | None = None,
) -> SyntheticChain:
    """A synthetic quotes table priced under ``model`` (see the module docstring).

    Parameters
    ----------
    model : {'heston', 'gbm', 'merton'}
        Pricing model; ``params`` overrides its defaults (e.g. ``{"rho": -0.5}``).
    seed : int or None
        Seed of the mid jitter and of open interest and volume; same seed, same chain.
    quote_date, spot, rate, dividend_yield
        Quote date (ISO string or date), spot level, continuously compounded rate and yield.
    expiries : list of dates, optional
        Default: ``default_expiries(quote_date)`` (6 monthlies, then quarterlies to 2 years).
    n_sd : float
        Strikes cover ln(K/F) in [-n_sd s, +0.75 n_sd s] with s = sqrt(E[ln-variance]) (capped to
        K/F in [0.2, 3]) on a round spacing of about 0.5%, 1% or 2% of spot.

    Returns
    -------
    SyntheticChain
    """
    if isinstance(quote_date, str):
        try:
            quote_date = dt.date.fromisoformat(quote_date)
        except ValueError:
            raise ValueError(f"quote_date must be an ISO date (YYYY-MM-DD), got {quote_date!r}") \
                from None
    if not 0 < spot <= MAX_SPOT:
        raise ValueError(f"spot must be a number in (0, {MAX_SPOT:g}] (MAX_SPOT), got {spot!r}")
    if not (np.isfinite(n_sd) and n_sd > 0):
        raise ValueError(f"n_sd must be a finite number > 0, got {n_sd!r}")
    for name, value in (("rate", rate), ("dividend_yield", dividend_yield)):
        if not (np.isfinite(value) and -0.5 < value < 0.5):
            raise ValueError(f"{name} must be a finite number in (-0.5, 0.5), got {value!r}")
    p = model_params(model, **(params or {}))
    if expiries is None:
        exp_dates = default_expiries(quote_date)
    else:
        exp_dates = []
        for e in expiries:
            d = dt.date.fromisoformat(e) if isinstance(e, str) else e
            if d <= quote_date:
                raise ValueError(f"expiry {d.isoformat()} is not after quote_date "
                                 f"{quote_date.isoformat()}")
            exp_dates.append(d)
        exp_dates = sorted(set(exp_dates))
        if not exp_dates:
            raise ValueError("expiries must not be empty")
    rng = as_generator(seed, "seed")
    parts = []
    few = []  # (expiry, strikes with a call and a put bid, spot enough for MIN_PAIRS of them)
    for d in exp_dates:
        t = _year_fraction(quote_date, "16:00", d)
        fwd = spot * np.exp((rate - dividend_yield) * t)
        disc = np.exp(-rate * t)
        sd = float(np.sqrt(p.log_cumulants(np.array([t]))[1][0]))
        step = _strike_step(spot, t)
        k_lo = fwd * max(0.2, float(np.exp(-n_sd * sd)))
        k_hi = fwd * min(3.0, float(np.exp(0.75 * n_sd * sd)))
        strikes = np.arange(np.ceil(k_lo / step), np.floor(k_hi / step) + 1) * step
        x = strikes / fwd
        c = p.call_prices([t], x)[0]
        call = disc * fwd * c
        put = call - disc * (fwd - strikes)
        has_bid, needs = np.ones(strikes.size, bool), np.zeros(strikes.size)
        for typ, price in (("C", call), ("P", np.maximum(put, 0.0))):
            is_call = typ == "C"
            iv_true = implied_vol(price, fwd, strikes, t, is_call=is_call, discount=disc,
                                  min_vol=1e-4, max_vol=5.0)
            vol = np.where(np.isfinite(iv_true), iv_true, np.sqrt(max(sd * sd / t, 1e-8)))
            vega = black_vega(fwd, strikes, vol, t, discount=disc)
            s_vol = 0.001 * (1.0 + 0.5 * np.abs(np.log(x)) / (0.2 * np.sqrt(t)))
            spread = np.maximum(2.0 * tick_size(price), 0.003 * price + s_vol * vega)
            mid = price + rng.uniform(-0.25, 0.25, size=price.shape) * spread
            raw_bid = mid - 0.5 * spread
            raw_ask = mid + 0.5 * spread
            tb = tick_size(raw_bid)
            bid = np.floor(np.round(raw_bid / tb, 9)) * tb
            bid = np.where(bid < 0.05 - 1e-12, 0.0, bid)
            ta = tick_size(raw_ask)
            ask = np.maximum(np.ceil(np.round(raw_ask / ta, 9)) * ta, 0.05)
            bid, ask = np.round(bid, 2), np.round(ask, 2)
            has_bid &= bid > 0
            needs = np.maximum(needs, _spot_for_a_bid(spot, price, s_vol * vega))
            quote_mid = 0.5 * (bid + ask)
            iv = np.where(bid > 0, implied_vol(quote_mid, fwd, strikes, t, is_call=is_call,
                                               discount=disc, min_vol=1e-4, max_vol=5.0), np.nan)
            iv_or = np.where(np.isfinite(iv), iv, 0.2)
            # spot greeks: e^{-q t} N(d1) (call), e^{-q t} (N(d1) - 1) (put), and the forward
            # gamma times (F / S)^2
            delta = black_delta(fwd, strikes, iv_or, t, is_call=is_call,
                                discount=np.exp(-dividend_yield * t))
            gamma = black_gamma(fwd, strikes, iv_or, t, discount=disc) * (fwd / spot) ** 2
            # open interest and volume: larger near the money and for short expiries
            weight = np.exp(-0.5 * (np.log(x) / max(sd, 1e-3)) ** 2) / np.sqrt(1.0 + t)
            oi = np.floor(rng.gamma(2.0, 2500.0, size=x.shape) * weight).astype(np.int64)
            vol_traded = np.floor(rng.gamma(1.0, 0.1, size=x.shape) * oi).astype(np.int64)
            rec = np.zeros(strikes.size, dtype=QUOTE_DTYPE)
            rec["expiry"] = d.isoformat()
            rec["t"] = t
            rec["strike"] = strikes
            rec["type"] = typ
            rec["bid"] = bid
            rec["ask"] = ask
            rec["mid"] = quote_mid
            rec["model_price"] = price
            rec["iv"] = iv
            rec["delta"] = np.where(np.isfinite(iv), delta, np.nan)
            rec["gamma"] = np.where(np.isfinite(iv), gamma, np.nan)
            rec["forward"] = fwd
            rec["discount"] = disc
            rec["open_interest"] = oi
            rec["volume"] = vol_traded
            parts.append(rec)
        need = float(np.sort(needs)[MIN_PAIRS - 1]) if needs.size >= MIN_PAIRS else np.inf
        if has_bid.sum() < MIN_PAIRS and spot < need < np.inf:  # a larger spot would do
            few.append((d, int(has_bid.sum()), need))
    if few:
        d, n, _ = few[0]
        least = max(need for _, _, need in few)
        raise ValueError(
            f"spot must be large enough for quotes on SPX ticks (prices scale with the spot, the "
            f"0.05 tick does not), got {spot!r}: expiry {d.isoformat()}"
            + (f" (and {len(few) - 1} more)" if len(few) > 1 else "")
            + f" has {n} strikes where both the call and the put have a bid of at least one "
            f"tick, fewer than the {MIN_PAIRS} a chain needs (MIN_PAIRS, for its put-call parity "
            f"fit); for this model, these expiries and parameters spot must be in about "
            f"[{least:.3g}, {MAX_SPOT:g}]")
    quotes = np.concatenate(parts)
    return SyntheticChain(
        quotes, quote_date=quote_date, spot=float(spot), rate=float(rate),
        dividend_yield=float(dividend_yield), model=str(model).lower(), params=p, seed=seed,
    )
