"""Option chains: load, clean, and slice on (expiry, root) (expiries are picked by
``deepquant.market.expiries``).

Two CSV layouts are read (``load_chain`` tells them apart from the first lines):

* **Cboe "delayed quotes"** download (``spx_quotedata.csv``): a blank line, a line
  ``<name>,Last: <spot>,...``, a line ``Date: 9 June 2023, 1:40 PM EDT,Bid: ...``, then the header
  ``Expiration Date,Calls,Last Sale,Net,Bid,Ask,...,Strike,Puts,Last Sale,Net,Bid,Ask,...`` and one
  row per (expiry, root, strike) with the call on the left of ``Strike`` and the put on its right.
  The root (``SPX``/``SPXW``) is read from the OCC symbol ``ROOT YYMMDD C|P STRIKE*1000``.
* **Normalized long table**: one row per contract with at least the columns
  ``quote_date, expiry, strike, type, bid, ask``; optional ``quote_time_et`` (default 16:00),
  ``root`` (default from ``option_symbol``, else ``underlying``, else ``"?"``), ``settlement``
  (``AM``/``PM``; default AM for the root ``SPX``, PM otherwise) and ``spot``.

Chains assembled from several snapshots (rows of a normalized file with their own quote times,
or several files in either layout passed together to ``load_chain``): the quote times may span at
most ``max_quote_spread`` seconds (default 300, five minutes; a wider span is an error naming the
option). The chain's quote instant is the latest row's; a contract seen in several snapshots
keeps its latest quote (the older ones are counted as ``n_superseded``); each slice records the
spread of its rows' quote times (``ChainSlice.quote_spread``).

Cleaning (counts kept in ``CleaningReport``): a contract is dropped when its slice has expired
(settlement instant not after the quote instant), when a price is negative (a corrupt row,
``n_negative``), when its bid is zero (or missing), or when it is crossed (bid > ask, or no ask).
A slice is keyed on (expiry, root): SPX AM-settled and SPXW PM-settled series on the same date
are different contracts with different settlement values.

The slices' two-sided quotes (0 < bid <= ask) are what the parity fit and the calibration use.
Two kinds of dropped contract still bound a price and are kept apart, per slice, in
``ChainSlice.one_sided`` (``OneSidedQuotes``; counted in ``CleaningReport.n_one_sided``):

* a zero or missing bid with an ask > 0: the option is worth between 0 and the ask (an upper
  bound only; Cboe shows far out-of-the-money strikes this way);
* a bid > 0 with no ask (missing, or shown as 0): worth at least the bid (a lower bound only).

A contract with neither a bid nor an ask says nothing and is dropped; a crossed quote
(0 < ask < bid) is dropped. ``deepquant.mmot.quote_bands.load_bands`` adds the one-sided quotes
to the bid-ask bands of ``deepquant.mmot.quotes_bounds.bounds_from_quotes``.

Time to expiry (``year_fraction``): ACT/365 on the elapsed wall time between the quote instant and
the settlement instant, both in US/Eastern (``America/New_York``, daylight saving handled), with
settlement at 09:30 ET for AM-settled roots (the special opening quotation) and 16:00 ET for
PM-settled roots.

Forwards and discount factors by put–call parity: ``deepquant.market.parity``.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deepquant.market.layouts import (
    EASTERN,
    NORMALIZED_REQUIRED,
    ParsedChain,
    parse_date,
    read_cboe,
    read_normalized,
)

__all__ = [
    "EASTERN",
    "MIN_PAIRS",
    "ChainSlice",
    "CleaningReport",
    "OneSidedQuotes",
    "OptionChain",
    "load_chain",
    "settlement_instant",
    "year_fraction",
]

MIN_PAIRS = 5
"""Two-sided call/put pairs an expiry needs for its put-call parity fit (``select_slices``)."""

DEFAULT_MAX_QUOTE_SPREAD = 300.0
"""Seconds: the widest span of quote times accepted in one chain (merged snapshots)."""

AM_SETTLEMENT_TIME = dt.time(9, 30)
PM_SETTLEMENT_TIME = dt.time(16, 0)
DAYS_PER_YEAR = 365.0



# ----------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class CleaningReport:
    """How many contracts the loader read, dropped and kept.

    Attributes
    ----------
    path : str
        Source file.
    n_rows : int
        Contract rows read (a Cboe row holds two contracts: a call and a put).
    n_expired : int
        Contracts in slices whose settlement instant is not after the quote instant.
    n_zero_bid : int
        Contracts (not expired) with a zero or missing bid (and no negative price).
    n_crossed : int
        Contracts (not expired, bid > 0) with bid > ask.
    n_kept : int
        Two-sided contracts kept (0 < bid <= ask).
    n_duplicate : int
        Rows repeating a kept contract (same expiry, root, strike, type) at the same quote time
        with identical quotes; counted once. Conflicting repeats at one time are an error.
    n_superseded : int
        Rows replaced by a later quote of the same contract (chains merged from snapshots).
    quote_spread : float
        Seconds between the earliest and the latest quote time of the rows read.
    max_quote_spread : float
        The largest spread accepted (``load_chain(max_quote_spread=...)``).
    n_one_sided : int
        Contracts among ``n_zero_bid`` and ``n_crossed`` kept apart as one-sided quotes (zero
        or missing bid with an ask, or a bid with no ask) in a slice's ``one_sided``.
    n_negative : int
        Contracts (not expired) with a negative bid or ask: corrupt, dropped (not one-sided).
    """

    path: str
    n_rows: int
    n_expired: int
    n_zero_bid: int
    n_crossed: int
    n_kept: int
    n_duplicate: int = 0
    n_superseded: int = 0
    quote_spread: float = 0.0
    max_quote_spread: float = 0.0
    n_one_sided: int = 0
    n_negative: int = 0

    def as_dict(self) -> dict[str, int | str | float]:
        return dict(path=self.path, n_rows=self.n_rows, n_expired=self.n_expired,
                    n_zero_bid=self.n_zero_bid, n_crossed=self.n_crossed, n_kept=self.n_kept,
                    n_duplicate=self.n_duplicate, n_superseded=self.n_superseded,
                    quote_spread=self.quote_spread, max_quote_spread=self.max_quote_spread,
                    n_one_sided=self.n_one_sided, n_negative=self.n_negative)


@dataclass(frozen=True, eq=False)
class OneSidedQuotes:
    """Contracts of one slice that bound a price from one side only, in currency units.

    Attributes
    ----------
    strikes : ndarray, shape (n,)
    is_call : ndarray of bool, shape (n,)
    bid : ndarray, shape (n,)
        0 where the contract has no bid (zero or missing): it is worth between 0 and its ask.
    ask : ndarray, shape (n,)
        inf where the contract has no ask: it is worth at least its bid.

    Sorted by strike (put before call); empty arrays when the slice has none.
    """

    strikes: np.ndarray
    is_call: np.ndarray
    bid: np.ndarray
    ask: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.strikes).size)

    @classmethod
    def empty(cls) -> OneSidedQuotes:
        return cls(np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros(0))


@dataclass(frozen=True, eq=False)
class ChainSlice:
    """Two-sided quotes of one (expiry, root) slice, in currency units.

    Attributes
    ----------
    expiry : datetime.date
    root : str
        Option root, e.g. ``"SPX"`` (AM-settled) or ``"SPXW"`` (PM-settled).
    settlement : str
        ``"AM"`` or ``"PM"``.
    t : float
        Year fraction from the quote instant to settlement (see ``year_fraction``).
    strikes : ndarray, shape (K,)
        Sorted distinct strikes with at least one two-sided contract.
    call_bid, call_ask, put_bid, put_ask : ndarray, shape (K,)
        Quotes; NaN where that contract was dropped (zero bid, crossed) or absent.
    quote_spread : float
        Seconds between the earliest and the latest quote time of the slice's kept contracts
        (0 for a chain from one snapshot).
    one_sided : OneSidedQuotes
        The slice's contracts with a zero (or missing) bid and an ask, or a bid and no ask
        (module docstring): not in the arrays above, so the parity fit and the calibration do
        not see them; the bid-ask bounds use them as one-sided constraints.
    """

    expiry: dt.date
    root: str
    settlement: str
    t: float
    strikes: np.ndarray
    call_bid: np.ndarray
    call_ask: np.ndarray
    put_bid: np.ndarray
    put_ask: np.ndarray
    quote_spread: float = 0.0
    one_sided: OneSidedQuotes = field(default_factory=OneSidedQuotes.empty)

    @property
    def label(self) -> str:
        """``"2023-07-21 SPX"``."""
        return f"{self.expiry.isoformat()} {self.root}"

    @property
    def days(self) -> float:
        """Time to expiry in days (ACT/365 year fraction times 365)."""
        return self.t * DAYS_PER_YEAR

    @property
    def call_ok(self) -> np.ndarray:
        """Mask (K,) of two-sided calls."""
        return np.isfinite(self.call_bid)

    @property
    def put_ok(self) -> np.ndarray:
        """Mask (K,) of two-sided puts."""
        return np.isfinite(self.put_bid)

    @property
    def n_quotes(self) -> int:
        """Number of two-sided contracts (calls plus puts)."""
        return int(self.call_ok.sum() + self.put_ok.sum())

    @property
    def n_pairs(self) -> int:
        """Number of strikes where both the call and the put are two-sided."""
        return int((self.call_ok & self.put_ok).sum())


@dataclass(frozen=True, eq=False)
class OptionChain:
    """A cleaned option chain: quote instant, spot and slices sorted by time to expiry.

    Attributes
    ----------
    path : str
    quote_time : datetime.datetime
        Quote instant, timezone-aware (US/Eastern).
    spot : float
        Underlying level shown with the chain (NaN when the file has none).
    slices : tuple of ChainSlice
        Non-expired slices with at least one two-sided contract, sorted by ``t`` (then root).
    cleaning : CleaningReport
    """

    path: str
    quote_time: dt.datetime
    spot: float
    slices: tuple[ChainSlice, ...]
    cleaning: CleaningReport

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def times(self) -> np.ndarray:
        """Year fractions of the slices, shape (S,)."""
        return np.array([s.t for s in self.slices])

    def slice(self, expiry: dt.date | str, root: str | None = None) -> ChainSlice:
        """The slice with this expiry (and root; required when two roots share the date)."""
        if isinstance(expiry, str):
            expiry = parse_date(expiry, what="expiry")
        hits = [s for s in self.slices if s.expiry == expiry and (root is None or s.root == root)]
        if not hits:
            have = ", ".join(s.label for s in self.slices)
            raise ValueError(f"{self.path}: no slice {expiry} {root or ''}; slices are: {have}")
        if len(hits) > 1:
            raise ValueError(
                f"{self.path}: {expiry} has several roots ({', '.join(s.root for s in hits)}); "
                "pass root="
            )
        return hits[0]


# ----------------------------------------------------------------------------- time
def settlement_instant(expiry: dt.date, settlement: str) -> dt.datetime:
    """Settlement instant in US/Eastern: 09:30 for ``"AM"``, 16:00 for ``"PM"``."""
    s = settlement.upper()
    if s not in ("AM", "PM"):
        raise ValueError(f"settlement must be 'AM' or 'PM', got {settlement!r}")
    clock = AM_SETTLEMENT_TIME if s == "AM" else PM_SETTLEMENT_TIME
    return dt.datetime.combine(expiry, clock, tzinfo=EASTERN)


def year_fraction(quote_time: dt.datetime, expiry: dt.date, settlement: str) -> float:
    """ACT/365 year fraction from ``quote_time`` to the settlement instant of ``expiry``.

    T = (settlement_instant - quote_time) / 365 days, on real elapsed time (time-zone aware, so a
    daylight-saving change in between counts its hour). Negative or zero means expired.
    """
    if quote_time.tzinfo is None:
        quote_time = quote_time.replace(tzinfo=EASTERN)
    delta = settlement_instant(expiry, settlement).astimezone(dt.UTC) - quote_time.astimezone(dt.UTC)
    return delta.total_seconds() / (DAYS_PER_YEAR * 86400.0)


def load_chain(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               max_quote_spread: float = DEFAULT_MAX_QUOTE_SPREAD) -> OptionChain:
    """Load an option chain CSV (Cboe delayed-quotes or normalized layout) and clean it.

    Parameters
    ----------
    path : path-like or sequence of path-likes
        The CSV file, or several files holding snapshots of one chain (each in either layout;
        they are merged as one file with several quote times would be). The layout is detected
        from the first non-blank line: a normalized file starts with a header containing
        ``quote_date``; a Cboe file starts with the underlying's name and ``Last:``.
    max_quote_spread : float
        Largest accepted span, in seconds, between the earliest and the latest quote time of the
        rows (a chain merged from snapshots); the chain is quoted at the latest time and a
        contract seen twice keeps its latest quote.

    Returns
    -------
    OptionChain
        Slices on (expiry, root), sorted by time to expiry, each holding two-sided quotes
        (0 < bid <= ask) in its quote arrays (what the calibration uses) and its zero-bid and
        one-sided quotes apart in ``one_sided``; the dropped counts are in ``chain.cleaning``.

    Raises
    ------
    ValueError
        A file is missing or unreadable, a required column is missing (named), a line has the
        wrong number of fields or an unreadable value (file and line named), no contract is
        two-sided and unexpired, or the quote times span more than ``max_quote_spread``.
    """
    if not (np.isfinite(max_quote_spread) and max_quote_spread >= 0):
        raise ValueError(f"max_quote_spread must be a number of seconds >= 0, got "
                         f"{max_quote_spread!r}")
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        raise ValueError("no option chain file given")
    parts = [_read_file(Path(p)) for p in paths]
    if len(parts) == 1:
        return _clean(str(paths[0]), parts[0], float(max_quote_spread))
    # several snapshots: every contract keeps its file's (or its row's) quote time; the spot is
    # the one shown with the latest snapshot that has one
    contracts = [replace(c, quote_time=c.quote_time or p.quote_time)
                 for p in parts for c in p.contracts]
    latest = max(parts, key=lambda p: p.quote_time)
    spots = [p for p in sorted(parts, key=lambda p: p.quote_time) if np.isfinite(p.spot)]
    merged = ParsedChain(latest.quote_time, spots[-1].spot if spots else float("nan"),
                         contracts)
    name = f"{paths[0]} (+{len(paths) - 1} more file{'s' if len(paths) > 2 else ''})"
    return _clean(name, merged, float(max_quote_spread))


def _read_file(path: Path) -> ParsedChain:
    """Read one CSV in either layout (not yet cleaned)."""
    name = str(path)
    if not path.exists():
        raise ValueError(f"option chain file {name!r} does not exist")
    if not path.is_file():
        raise ValueError(f"option chain file {name!r} is not a regular file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{name}: not a readable CSV file ({exc})") from exc
    first = next((i for i, r in enumerate(lines) if any(c.strip() for c in r)), None)
    if first is None:
        raise ValueError(f"{name}: the file is empty")
    head = [c.strip().lower() for c in lines[first]]
    if "quote_date" in head:
        return read_normalized(path, lines, first)
    if any(c.startswith("last:") for c in head) or (
            len(lines) > first + 2 and any("expiration date" == c.strip().lower()
                                           for c in lines[first + 2])):
        return read_cboe(path, lines, first)
    raise ValueError(
        f"{name}, line {first + 1}: unknown layout; expected a normalized header with columns "
        f"{list(NORMALIZED_REQUIRED)} or a Cboe delayed-quotes file ('<name>,Last: ...')"
    )


def _fmt_seconds(sec: float) -> str:
    return f"{sec / 60:.4g} min" if sec >= 60 else f"{sec:.4g} s"


def _clean(name: str, parsed: ParsedChain, max_quote_spread: float) -> OptionChain:
    qt = parsed.quote_time
    stamps = [c.quote_time for c in parsed.contracts if c.quote_time is not None]
    spread = (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0
    if spread > max_quote_spread:
        raise ValueError(
            f"{name}: quote times span {_fmt_seconds(spread)} ({min(stamps):%Y-%m-%d %H:%M:%S} "
            f"to {max(stamps):%Y-%m-%d %H:%M:%S} ET), more than max_quote_spread = "
            f"{_fmt_seconds(max_quote_spread)}; a chain merged from snapshots must be quoted "
            "within that span: raise --max-quote-spread (deepquant calibrate) or "
            "load_chain(max_quote_spread=...) to accept it")
    groups: dict[tuple[dt.date, str, str], dict[float, dict[str, object]]] = {}
    n_rows = len(parsed.contracts)
    n_expired = n_zero = n_crossed = n_dup = n_old = n_negative = 0
    times: dict[tuple[dt.date, str, str], float] = {}
    partial: dict[tuple[dt.date, str, str], dict[tuple[float, bool], tuple[float, float]]] = {}
    # a contract quoted in several snapshots: only its latest quote counts (even without a bid)
    latest: dict[tuple, dt.datetime] = {}
    for c in parsed.contracts:
        ident = (c.expiry, c.root, c.settlement, c.strike, c.is_call)
        when = c.quote_time or qt
        if ident not in latest or when > latest[ident]:
            latest[ident] = when
    for c in parsed.contracts:
        key = (c.expiry, c.root, c.settlement)
        if (c.quote_time or qt) < latest[(*key, c.strike, c.is_call)]:
            n_old += 1
            continue
        if key not in times:
            times[key] = year_fraction(qt, c.expiry, c.settlement)
        if times[key] <= 0:
            n_expired += 1
            continue
        if c.bid < 0 or c.ask < 0:  # corrupt: no price of an option is below 0
            n_negative += 1
            continue
        if not (c.bid > 0):  # zero or missing
            n_zero += 1
            if c.ask > 0:    # worth between 0 and the ask: kept apart as a one-sided quote
                _keep_one_sided(name, partial, key, c, 0.0, c.ask)
            continue
        if not (c.ask >= c.bid):  # crossed (or missing ask)
            n_crossed += 1
            if not (c.ask > 0):  # no ask (missing, or shown as 0): worth at least the bid
                _keep_one_sided(name, partial, key, c, c.bid, np.inf)
            continue
        side = "c" if c.is_call else "p"
        slot = groups.setdefault(key, {}).setdefault(c.strike, {})
        when = c.quote_time or qt
        if side + "b" in slot:       # the same contract at the same (latest) time
            if (slot[side + "b"], slot[side + "a"]) != (c.bid, c.ask):
                raise ValueError(
                    f"{name}: conflicting quotes for {c.expiry} {c.root} "
                    f"{'call' if c.is_call else 'put'} {c.strike:g} at "
                    f"{when:%Y-%m-%d %H:%M:%S}: {slot[side + 'b']}/{slot[side + 'a']} and "
                    f"{c.bid}/{c.ask}")
            n_dup += 1
            continue
        slot[side + "b"], slot[side + "a"], slot[side + "t"] = c.bid, c.ask, when
    n_kept = sum(("cb" in v) + ("pb" in v) for g in groups.values() for v in g.values())
    one_sided = {key: _one_sided(partial.get(key, {}), by_strike)
                 for key, by_strike in groups.items()}
    report = CleaningReport(name, n_rows, n_expired, n_zero, n_crossed, n_kept, n_dup, n_old,
                            spread, max_quote_spread, sum(map(len, one_sided.values())),
                            n_negative=n_negative)
    if n_kept == 0:
        raise ValueError(
            f"{name}: no two-sided quotes (0 < bid <= ask) in unexpired slices: {n_rows} contracts "
            f"read, {n_expired} expired, {n_zero} with zero bid, {n_crossed} crossed, "
            f"{n_negative} with a negative bid or ask")
    slices = []
    for (expiry, root, settle), by_strike in groups.items():
        ks = np.array(sorted(by_strike))
        arr = {f: np.array([by_strike[k].get(f, np.nan) for k in ks], dtype=float)
               for f in ("cb", "ca", "pb", "pa")}
        kept = [v[f] for v in by_strike.values() for f in ("ct", "pt") if f in v]
        slices.append(ChainSlice(expiry, root, settle, times[(expiry, root, settle)], ks,
                                 arr["cb"], arr["ca"], arr["pb"], arr["pa"],
                                 (max(kept) - min(kept)).total_seconds(),
                                 one_sided[(expiry, root, settle)]))
    slices.sort(key=lambda s: (s.t, s.root))
    return OptionChain(name, qt, float(parsed.spot), tuple(slices), report)


def _keep_one_sided(name: str, partial: dict, key: tuple, c, bid: float, ask: float) -> None:
    """Record a one-sided quote of slice ``key``; a conflicting repeat is an error."""
    slot = partial.setdefault(key, {})
    ident = (c.strike, c.is_call)
    if ident in slot and slot[ident] != (bid, ask):
        raise ValueError(
            f"{name}: conflicting quotes for {c.expiry} {c.root} "
            f"{'call' if c.is_call else 'put'} {c.strike:g}: {slot[ident][0]}/{slot[ident][1]} "
            f"and {bid}/{ask}")
    slot[ident] = (bid, ask)


def _one_sided(partial: dict[tuple[float, bool], tuple[float, float]],
               two_sided: dict[float, dict[str, object]]) -> OneSidedQuotes:
    """The one-sided quotes of a slice, less any contract also quoted two-sided there."""
    items = sorted((k, call, b, a) for (k, call), (b, a) in partial.items()
                   if ("cb" if call else "pb") not in two_sided.get(k, {}))
    if not items:
        return OneSidedQuotes.empty()
    k, call, b, a = (np.array(v) for v in zip(*items))
    return OneSidedQuotes(k.astype(float), call.astype(bool), b.astype(float), a.astype(float))
