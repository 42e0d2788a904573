"""Exercise values of the Bermudan engine: which payoffs of ``deepquant.payoffs`` it prices, and
what exercising a path-dependent payoff early pays.

**Payoff grid.** A payoff of ``deepquant.payoffs`` is defined on dates 0..N (row indices). The
engine maps them to the times u_i = i T / N, i = 0..N, of its simulation grid, with X_i = S_{u_i}
(date 0 is t = 0, on every path whether or not t = 0 is an exercise date). N is the pricer's
``payoff_dates`` (default: its number of exercise dates, so the payoff dates ARE the exercise
dates); it must be a multiple of the number of exercise dates, so that every exercise date
t_j = j T / n_dates is a payoff date i_j = j N / n_dates, and divide the number of simulation
steps.

**Exercise value (the truncated payoff).** Exercising at t_j pays the payoff of the path
truncated at t_j,

    h_j = payoff.evaluate(X_0, ..., X_{i_j}),

i.e. the payoff of the library with its horizon at the exercise date: its default dates resolve
on the i_j + 1 dates 0..i_j. So the Asian pays on the average of X_1..X_{i_j} so far (equal
weights 1/i_j; at t = 0 on X_0), the lookback on the running max / min over X_0..X_{i_j}, the
barrier option the vanilla on X_{i_j} switched by the barrier flag over X_0..X_{i_j}, and the
European put / call (K - X_{i_j})^+ / (X_{i_j} - K)^+ (the spot payoff of the plain Bermudan).
The discounted exercise value is Z_j = exp(-r t_j) h_j. With a single exercise date at T the
Bermudan is the European payoff ``payoff.evaluate(X_0..X_N)``.

**State.** h_j is a function of (X_{i_j}, A_j), A_j = ``payoff.statistic(i_j + 1)`` evaluated
on the truncated path (``truncated_payoff``). A_j, normalised, enters the regression features
(``state_columns``), the integrand of the signature martingale and the sub-simulation dual,
whose one-period inner paths continue the outer path's payoff dates (the truncated payoff is
evaluated on the outer X_0..X_{i_j} followed by the inner path's payoff dates), so the dual
values the same exercise values as the lower bound.

Accepted: ``EuropeanPut`` / ``EuropeanCall`` (``date=None``), ``AsianCall`` / ``AsianPut``
(default dates and weights), ``LookbackCall`` / ``LookbackPut`` and ``BarrierCall`` /
``BarrierPut`` (default monitoring dates). Rejected with a ``ValueError`` naming them: the
forward starts (the strike k X_{t1} is not set before t1, so the path truncated there has no
payoff) and ``SumSquaredIncrements`` (no strike; its truncated value, the realised sum so far,
only grows, so it is a European). Explicit ``dates`` are accepted only when they are the
payoff's default on the payoff grid (explicit averaging weights never): the truncated payoff of
other dates is not defined by the library.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

import numpy as np

from deepquant.payoffs import EuropeanCall, EuropeanPut, Payoff

__all__ = ["check_exercise_payoff", "check_payoff_dates", "exercise_payoff", "is_put",
           "is_path_dependent", "option_name", "payoff_label", "payoff_grid_states", "price_floor",
           "state_columns", "statistic_kind", "truncated_payoff"]

_PATH_KINDS = ("sum", "max", "min", "hit")  # statistics whose truncated payoff is defined


def statistic_kind(payoff: Payoff) -> str:
    """The kind of ``payoff``'s statistic ("none", "sum", ...; "path" when it is evaluated on
    the whole path, "unknown" when its dates do not resolve)."""
    if type(payoff).evaluate is not Payoff.evaluate:
        return "path"
    dates = [getattr(payoff, name, None) for name in ("date", "t1", "t2")]
    dates += list(getattr(payoff, "dates", None) or ())
    n_dates = 2 + max([int(d) for d in dates if isinstance(d, numbers.Integral)] + [11])
    try:
        return payoff.statistic(n_dates).kind
    except ValueError:
        return "unknown"


def _rejection(payoff: Payoff, kind: str) -> str | None:
    """Why ``payoff`` has no early-exercise value (one sentence), or None."""
    what = f"{payoff.name!r} ({type(payoff).__name__})"
    if kind == "path":
        return (f"{what} depends on all of its dates (it is evaluated on the whole path) and "
                f"has no strike; its value on the path truncated at an exercise date, the "
                f"realised sum so far, only grows with the date, so early exercise never pays: "
                f"price it as a European")
    if kind == "value":
        return (f"{what} depends on the path through the spot remembered at an earlier date "
                f"(forward start): its strike k X_t1 is set at date t1, so the path truncated "
                f"at an earlier exercise date has no payoff (no early-exercise value)")
    if kind not in ("none", *_PATH_KINDS):
        return f"{what} has a path statistic ({kind!r}) without a truncated payoff"
    return None


def check_exercise_payoff(payoff: Payoff) -> Payoff:
    """Accept a payoff with an early-exercise value (see the module docstring); ``ValueError``
    naming any other payoff and why. The payoff's dates are checked against the payoff grid
    by ``check_payoff_dates``."""
    if not isinstance(payoff, Payoff):
        raise ValueError(f"payoff must be a payoff of deepquant.payoffs (EuropeanPut, "
                         f"EuropeanCall, AsianCall, ...), or a strike, got {payoff!r}")
    if getattr(payoff, "weights", None) is not None:
        raise ValueError(
            f"{payoff.name!r} has weights={payoff.weights!r}: the engine's Asian pays on the "
            f"equally weighted average of the payoff dates so far (the truncated payoff); pass "
            f"weights=None")
    kind = statistic_kind(payoff)
    why = _rejection(payoff, kind)
    if why is None and kind == "none" and not isinstance(payoff, EuropeanPut | EuropeanCall):
        why = f"{payoff.name!r} ({type(payoff).__name__}) is not a payoff the engine knows"
    if why is not None:
        raise ValueError(
            f"the rough Bermudan engine prices a payoff truncated at each exercise date "
            f"(EuropeanPut, EuropeanCall, AsianCall/Put, LookbackCall/Put, BarrierCall/Put); "
            f"{why}")
    if getattr(payoff, "date", None) is not None:
        raise ValueError(
            f"{payoff.name!r} has date={payoff.date!r}: the Bermudan engine evaluates the "
            f"exercise value at each of its own exercise dates (the pricer's n_dates and T); "
            f"pass date=None")
    if not (math.isfinite(payoff.strike) and payoff.strike > 0):
        raise ValueError(f"strike must be a finite number > 0, got {payoff.strike!r}")
    barrier = getattr(payoff, "barrier", None)
    if barrier is not None and not (math.isfinite(barrier) and barrier > 0):
        raise ValueError(f"barrier must be a finite number > 0, got {barrier!r}")
    return payoff


def check_payoff_dates(payoff: Payoff, n_payoff: int) -> Payoff:
    """``payoff`` with default dates on the payoff grid of ``n_payoff`` + 1 dates (explicit
    ``dates`` equal to that default are dropped); ``ValueError`` naming ``dates`` otherwise."""
    dates = getattr(payoff, "dates", None)
    if dates is None:
        return payoff
    default = replace(payoff, dates=None).statistic(n_payoff + 1).dates
    if tuple(int(d) for d in dates) != default:
        raise ValueError(
            f"payoff dates={tuple(dates)!r} of {payoff.name!r} do not match the payoff grid: "
            f"the engine evaluates the payoff on the path truncated at each exercise date, over "
            f"the payoff dates 0..N at i T / N with N = payoff_dates = {n_payoff} (the exercise "
            f"dates unless payoff_dates is set); pass dates=None (or dates={default!r})")
    return replace(payoff, dates=None)


def exercise_payoff(payoff: Payoff | float, option: str = "put") -> Payoff:
    """The exercise payoff as a payoff of ``deepquant.payoffs``.

    ``payoff`` is an accepted payoff (``check_exercise_payoff``; strike and barrier in price
    units), or a strike K with ``option`` "put" or "call" (a ``EuropeanPut`` / ``EuropeanCall``).
    """
    if isinstance(payoff, Payoff):
        return check_exercise_payoff(payoff)
    if option not in ("put", "call"):
        raise ValueError(f"option must be 'put' or 'call', got {option!r}")
    strike = payoff
    if isinstance(strike, bool) or not (isinstance(strike, int | float | np.floating)
                                        and math.isfinite(strike) and strike > 0):
        raise ValueError(f"strike must be a finite number > 0 or a deepquant.payoffs payoff, "
                         f"got {strike!r}")
    return EuropeanPut(strike=float(strike)) if option == "put" else EuropeanCall(
        strike=float(strike))


def is_put(payoff: Payoff) -> bool:
    """True for the put side (European, Asian, lookback or barrier put)."""
    return payoff.name.endswith("-put")


def payoff_label(payoff: Payoff) -> str:
    """The payoff's command-line name (``deepquant.payoffs.make_payoff``): its ``name``, with
    the barrier type for a barrier payoff ("up-and-out-put")."""
    kind = getattr(payoff, "barrier_type", None)
    return f"{kind}-{option_name(payoff)}" if kind else payoff.name


def option_name(payoff: Payoff) -> str:
    """"put" or "call" for an accepted exercise payoff."""
    return "put" if is_put(payoff) else "call"


def is_path_dependent(payoff: Payoff) -> bool:
    """True unless the exercise value is a function of the current spot (a European)."""
    return not isinstance(payoff, EuropeanPut | EuropeanCall)


def truncated_payoff(payoff: Payoff, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, A): the payoff of the truncated path X (..., i + 1) (payoff dates 0..i) and its
    statistic at its last date, each shape (...)."""
    X = np.asarray(X, dtype=float)
    n = X.shape[-1]
    return payoff.evaluate(X), payoff.statistic(n).evaluate(X, payoff.last_date(n))


def payoff_grid_states(S: np.ndarray, payoff: Payoff, dates) -> tuple[np.ndarray, np.ndarray]:
    """(h, A), each (n, len(dates)): the truncated payoff and its statistic at the payoff dates
    ``dates`` (indices into the last axis of the payoff-grid prices S (n, N + 1))."""
    S = np.asarray(S, dtype=float)
    h = np.empty((S.shape[0], len(dates)))
    a = np.empty_like(h)
    for c, i in enumerate(dates):
        h[:, c], a[:, c] = truncated_payoff(payoff, S[:, : int(i) + 1])
    return h, a


def state_columns(payoff: Payoff, s: np.ndarray, a: np.ndarray) -> list[np.ndarray]:
    """Regression columns of the payoff statistic A at a date, for s = S/K (broadcasting):
    none for a European; the flag A and A s for a barrier; a = A/K, a^2 and a s otherwise."""
    kind = statistic_kind(payoff)
    if kind == "none":
        return []
    if kind == "hit":
        return [a, a * s]
    a = a / float(payoff.strike)
    return [a, a * a, a * s]


def price_floor(model, payoff: Payoff, *, T: float, n_dates: int, exercise_at_zero: bool
                ) -> tuple[float, str]:
    """A lower bound of the Bermudan price that every upper bound must respect, and its name:
    the exercise value at t = 0, h_0 = ``payoff`` on the path X_0 = S0 (when t = 0 is an
    exercise date: stopping at once is a stopping rule), and, in the Black-Scholes limit
    (``model.is_black_scholes``: constant variance xi0, where the log-Euler scheme is exact)
    for a put or call, the largest European price to an exercise date t_j = j T / n_dates
    (Black-Scholes with sigma = sqrt(xi0); stopping at t_j is a stopping rule); the largest of
    them. (nan, "") when neither applies."""
    floors = []
    if exercise_at_zero:
        h0 = float(truncated_payoff(payoff, np.array([[float(model.S0)]]))[0][0])
        floors.append((h0, "the exercise value at t = 0"))
    if model.is_black_scholes and not is_path_dependent(payoff):
        from deepquant.blackscholes import bs_price

        t = T * np.arange(1, n_dates + 1) / n_dates
        euro = bs_price(float(model.S0), float(payoff.strike), math.sqrt(model.xi0), t,
                        rate=model.r, is_call=not is_put(payoff))
        j = int(np.argmax(euro))
        floors.append((float(euro[j]), f"the Black-Scholes European price to t={t[j]:.4g}"))
    if not floors:
        return math.nan, ""
    return max(floors, key=lambda f: f[0])
