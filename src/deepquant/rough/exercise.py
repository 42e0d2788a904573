"""Exercise values of the Bermudan engine: which payoffs of ``deepquant.payoffs`` it prices.

The engine's state at an exercise date t_j is the simulated path up to t_j, seen through the
regression features (polynomials in S and V, the signature of (t, log S, V), European values;
``deepquant.rough.lsm``), the martingale basis (``deepquant.rough.dual``) and the one-period
inner paths of the sub-simulation dual, which restart from (S_{t_j}, V_{t_j}) and the variance
history and value the exercise at t_{j+1} as g(S_{t_{j+1}}) (``deepquant.rough.subsim``).
A payoff is priced when its exercise value is a function of the current spot, Z_j =
exp(-r t_j) g(S_{t_j}) with g = ``payoff.terminal(S, .)`` evaluated at every exercise date:
in this library the put (K - S)^+ and the call (S - K)^+ (``EuropeanPut``, ``EuropeanCall``,
with ``date=None``: the exercise dates are the pricer's).

Every other payoff depends on the path through its statistic (``Payoff.statistic``: running
average, running max / min, a remembered value, a barrier flag) or through all increments
(``SumSquaredIncrements``). Its exercise value g(S_{t_j}, A_{t_j}) would need the statistic
A on the exercise dates as part of the state; the sub-simulation dual would then value a
different payoff than the one the lower bound exercises, so the bracket would be wrong, not
just loose. Such payoffs are rejected with a ``ValueError`` that names them.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from deepquant.payoffs import EuropeanCall, EuropeanPut, Payoff

__all__ = ["check_exercise_payoff", "exercise_payoff", "option_name"]

_STATISTIC_REASONS = {
    "sum": "a running average over its averaging dates",
    "max": "a running maximum over its monitoring dates",
    "min": "a running minimum over its monitoring dates",
    "value": "the spot remembered at an earlier date (forward start)",
    "hit": "a barrier-crossing flag over its monitoring dates",
}


def _path_dependence(payoff: Payoff) -> str:
    """Why ``payoff`` is not a function of the current spot (one phrase)."""
    if type(payoff).evaluate is not Payoff.evaluate:
        return "all of its dates (it is evaluated on the whole path)"
    dates = [getattr(payoff, name, None) for name in ("date", "t1", "t2")]
    dates += list(getattr(payoff, "dates", None) or ())
    n_dates = 2 + max([int(d) for d in dates if isinstance(d, numbers.Integral)] + [11])
    try:
        kind = payoff.statistic(n_dates).kind
    except ValueError:
        kind = "unknown"
    return _STATISTIC_REASONS.get(kind, f"its path statistic ({kind!r})")


def check_exercise_payoff(payoff: Payoff) -> Payoff:
    """Accept a payoff whose exercise value is a function of the current spot (a put or a call
    of ``deepquant.payoffs`` with ``date=None``); ``ValueError`` naming any other payoff."""
    if not isinstance(payoff, Payoff):
        raise ValueError(f"payoff must be a deepquant.payoffs.EuropeanPut or EuropeanCall, or a "
                         f"strike, got {payoff!r}")
    if not isinstance(payoff, EuropeanPut | EuropeanCall):
        raise ValueError(
            f"the rough Bermudan engine prices payoffs whose exercise value is a function of the "
            f"current spot (deepquant.payoffs.EuropeanPut or EuropeanCall); {payoff.name!r} "
            f"({type(payoff).__name__}) depends on the path through "
            f"{_path_dependence(payoff)}, which the engine's state (regression features and "
            f"the dual's sub-simulation) does not carry")
    if payoff.date is not None:
        raise ValueError(
            f"{payoff.name!r} has date={payoff.date!r}: the Bermudan engine evaluates the "
            f"exercise value at each of its own exercise dates (the pricer's n_dates and T); "
            f"pass date=None")
    if not (math.isfinite(payoff.strike) and payoff.strike > 0):
        raise ValueError(f"strike must be a finite number > 0, got {payoff.strike!r}")
    return payoff


def exercise_payoff(payoff: Payoff | float, option: str = "put") -> Payoff:
    """The exercise value g(S) as a payoff of ``deepquant.payoffs``.

    ``payoff`` is a ``EuropeanPut`` or ``EuropeanCall`` (strike in price units; its ``terminal``
    is evaluated at every exercise date), or a strike K with ``option`` "put" or "call".
    """
    if isinstance(payoff, Payoff):
        return check_exercise_payoff(payoff)
    if option not in ("put", "call"):
        raise ValueError(f"option must be 'put' or 'call', got {option!r}")
    strike = payoff
    if isinstance(strike, bool) or not (isinstance(strike, int | float | np.floating)
                                        and math.isfinite(strike) and strike > 0):
        raise ValueError(f"strike must be a finite number > 0 or a deepquant.payoffs put/call, "
                         f"got {strike!r}")
    return EuropeanPut(strike=float(strike)) if option == "put" else EuropeanCall(
        strike=float(strike))


def option_name(payoff: Payoff) -> str:
    """"put" or "call" for an accepted exercise payoff."""
    return "put" if isinstance(payoff, EuropeanPut) else "call"
