"""Expiry requests on an option chain: tenors ('30d', '3m', '1y'), dates ('YYYY-MM-DD', with an
optional root) and ranges of tenors ('7d..1y'), read by ``parse_expiry`` and mapped to the chain's
slices by ``select_slices``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import numpy as np

from deepquant.market.quotes import DAYS_PER_YEAR, MIN_PAIRS, ChainSlice, OptionChain
from deepquant.results import check_count

__all__ = ["parse_expiry", "select_slices"]

_TENOR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dwmy])\s*$", re.IGNORECASE)
_DATE = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})(?:[:@/ ]([A-Za-z]+))?\s*$")


def parse_expiry(spec: str | float | dt.date) -> tuple[str, float | dt.date, str | None]:
    """Read an expiry request.

    ``'30d'``, ``'6w'``, ``'3m'`` (3 x 365/12 days), ``'1y'`` or a number of days give
    ``('days', days, None)``; ``'YYYY-MM-DD'`` or ``'YYYY-MM-DD:ROOT'`` give
    ``('date', date, root)``.
    """
    if isinstance(spec, dt.date):
        return "date", spec, None
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return "days", float(spec), None
    text = str(spec)
    m = _TENOR.match(text)
    if m:
        n, unit = float(m.group(1)), m.group(2).lower()
        days = n * {"d": 1.0, "w": 7.0, "m": DAYS_PER_YEAR / 12, "y": DAYS_PER_YEAR}[unit]
        return "days", days, None
    m = _DATE.match(text)
    if m:
        return "date", dt.date.fromisoformat(m.group(1)), (m.group(2) or None)
    raise ValueError(f"expiry {text!r} is neither a tenor like '30d', '6w', '3m', '1y' nor a date "
                     "'YYYY-MM-DD' (optionally ':ROOT', e.g. '2023-07-21:SPX')")


def select_slices(chain: OptionChain, expiries: Sequence[str | float | dt.date],
                  *, min_pairs: int = MIN_PAIRS, min_slices: int = 1) -> list[ChainSlice]:
    """Pick one slice per requested expiry.

    A tenor (``"30d"``, ``"6w"``, ``"3m"`` = 3 x 365/12 days, ``"1y"``, or a number of days)
    maps to the slice whose ACT/365 time to expiry is nearest (a tenor <= 0, or outside
    [half the first slice's, twice the last slice's] days, is an error); a date ``YYYY-MM-DD`` to the slice
    on that date (``YYYY-MM-DD:ROOT`` to choose the root; without one, the slice with the most
    two-sided quotes); a range of tenors ``"7d..1y"`` to every slice in it (both AM and PM
    slices of a date). Only slices with at least ``min_pairs`` put–call pairs are candidates.
    The result is sorted by time to expiry.

    ``min_slices``: usable slices the chain must have (1 for bid-ask bounds, a one-period
    problem; 2 for a calibration in convex order, ``calibrate_chain``).

    Raises
    ------
    ValueError
        The chain has fewer than ``min_slices`` usable slices, a date is not in the chain, or
        two requests map to the same slice.
    """
    check_count(min_slices, "min_slices")
    usable = [s for s in chain.slices if s.n_pairs >= min_pairs]
    if len(usable) < min_slices:
        labels = ", ".join(s.label for s in usable) or "none"
        why = ("; a single expiry cannot be calibrated in convex order" if min_slices == 2
               else "")
        raise ValueError(f"{chain.path}: needs at least {min_slices} expir"
                         f"{'y' if min_slices == 1 else 'ies'} with >= {min_pairs} two-sided "
                         f"call/put pairs, found {len(usable)} ({labels}){why}")
    if len(expiries) == 0:
        raise ValueError("no expiries requested")
    chosen: dict[int, str] = {}
    for spec in expiries:
        if isinstance(spec, str) and ".." in spec:
            a, b = spec.split("..", 1)
            (ka, da, _), (kb, db, _) = parse_expiry(a), parse_expiry(b)
            if ka != "days" or kb != "days":
                raise ValueError(f"expiry range {spec!r} must be two tenors, e.g. '7d..1y'")
            hits = [j for j, s in enumerate(usable) if float(da) <= s.days <= float(db)]
            if not hits:
                raise ValueError(f"{chain.path}: no usable slice between {a} and {b}")
            for j in hits:
                chosen.setdefault(j, spec)
            continue
        kind, value, root = parse_expiry(spec)
        if kind == "days":
            lo, hi = min(s.days for s in usable), max(s.days for s in usable)
            if not (float(value) > 0 and lo / 2 <= float(value) <= 2 * hi):
                # the nearest slice would be a different maturity, not an approximation of it
                avail = ", ".join(f"{s.label} ({s.days:.0f} days)" for s in usable)
                raise ValueError(f"{chain.path}: expiry {str(spec)!r} ({float(value):g} days) is "
                                 f"too far from the chain's expiries (a tenor must be > 0 and "
                                 f"within a factor 2 of {lo:.0f}..{hi:.0f} days); available: "
                                 f"{avail}")
            i = int(np.argmin([abs(s.days - float(value)) for s in usable]))
        else:
            hits = [j for j, s in enumerate(usable)
                    if s.expiry == value and (root is None or s.root.upper() == root.upper())]
            if not hits:
                avail = ", ".join(s.label for s in usable)
                raise ValueError(f"{chain.path}: no usable slice on {value}"
                                 f"{' ' + root if root else ''}; available: {avail}")
            i = max(hits, key=lambda j: usable[j].n_quotes)
        if i in chosen:
            raise ValueError(f"expiries {chosen[i]!r} and {str(spec)!r} both map to "
                             f"{usable[i].label} ({usable[i].days:.1f} days); ask for distinct "
                             "expiries")
        chosen[i] = str(spec)
    return [usable[i] for i in sorted(chosen, key=lambda j: usable[j].t)]
