"""The two CSV layouts of an option chain: a Cboe "delayed quotes" download and a normalized
long table (see ``deepquant.market.quotes.load_chain``, which detects the layout and cleans the
contracts read here). Every error names the file, the line and the column.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

__all__ = ["EASTERN", "NORMALIZED_REQUIRED", "ParsedChain", "parse_date", "read_cboe",
           "read_normalized"]

EASTERN = ZoneInfo("America/New_York")
"""Time zone of SPX quotes and settlements."""

_OCC = re.compile(r"^\s*([A-Z]+?)(\d{6})([CP])(\d{8})\s*$")
NORMALIZED_REQUIRED = ("quote_date", "expiry", "strike", "type", "bid", "ask")


def _default_settlement(root: str) -> str:
    """AM for the monthly ``SPX`` root (and other roots without a trailing W), PM for weeklies."""
    return "PM" if root.upper().endswith("W") or root.upper() in ("?", "") else "AM"


# ----------------------------------------------------------------------------- parsing helpers
def parse_date(text: str, *, what: str, where: str = "") -> dt.date:
    text = text.strip()
    for fmt in ("%Y-%m-%d", "%a %b %d %Y", "%m/%d/%Y", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"{where}cannot read {what} {text!r} as a date (expected YYYY-MM-DD)")


def _parse_float(text: str, *, column: str, where: str) -> float:
    t = text.strip()
    if t == "":
        return float("nan")
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"{where}column {column!r}: {text!r} is not a number") from None
    if not np.isfinite(v):
        raise ValueError(f"{where}column {column!r}: {text!r} is not finite")
    return v


def _parse_cboe_timestamp(text: str, where: str) -> dt.datetime:
    """``'Date: 9 June 2023, 1:40 PM EDT'`` (also ``'June 9, 2023 at 1:40 PM EDT'``)."""
    t = text.strip()
    if t.lower().startswith("date:"):
        t = t[5:].strip()
    t = re.sub(r"\s+(EDT|EST|ET)$", "", t).replace(" at ", ", ")
    for fmt in ("%d %B %Y, %I:%M %p", "%B %d, %Y, %I:%M %p", "%d %B %Y, %H:%M"):
        try:
            return dt.datetime.strptime(t, fmt).replace(tzinfo=EASTERN)
        except ValueError:
            continue
    raise ValueError(f"{where}cannot read the quote timestamp {text!r} (expected "
                     "'Date: 9 June 2023, 1:40 PM EDT')")


def _float_after_colon(text: str) -> float:
    try:
        return float(text.split(":", 1)[1])
    except (IndexError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- loaders
@dataclass
class _Contract:
    expiry: dt.date
    root: str
    settlement: str
    strike: float
    is_call: bool
    bid: float
    ask: float
    quote_time: dt.datetime | None = None  # None: the file's one timestamp


@dataclass
class ParsedChain:
    """What a layout reader returns: the quote instant (the latest row's), the spot and the
    contracts as read (not yet cleaned)."""

    quote_time: dt.datetime
    spot: float
    contracts: list[_Contract] = field(default_factory=list)


def _data_rows(lines: list[list[str]], start: int, name: str, n_fields: int):
    """Yield (``'<file>, line <n>: '``, row) for the non-blank rows from ``lines[start]`` on
    (0-based), each checked to have the header's number of fields."""
    for lineno, row in enumerate(lines[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{name}, line {lineno}: "
        if len(row) != n_fields:
            raise ValueError(f"{where}expected {n_fields} fields as in the header, "
                             f"found {len(row)}")
        yield where, row


def read_cboe(path: Path, lines: list[list[str]], first: int) -> ParsedChain:
    """Cboe layout; ``lines[first]`` is the ``<name>,Last: ...`` line (0-based index)."""
    name = str(path)
    if len(lines) < first + 3:
        raise ValueError(f"{name}: a Cboe quote file needs a name line, a date line and a column "
                         f"header, found {len(lines) - first} non-blank-led lines")
    spot = float("nan")
    for cell in lines[first]:
        if cell.strip().lower().startswith("last:"):
            spot = _float_after_colon(cell)
    date_line = lines[first + 1]
    # the timestamp itself holds a comma, so csv splits it over the first two cells
    quote_time = _parse_cboe_timestamp(",".join(date_line[:2]),
                                       f"{name}, line {first + 2}: ")
    hline = first + 3  # 1-based line number of the column header
    header = [h.strip() for h in lines[first + 2]]
    if "Strike" not in header:
        raise ValueError(f"{name}, line {hline}: missing column 'Strike' in the Cboe header "
                         f"{header}")
    ks = header.index("Strike")
    left, right = header[:ks], header[ks + 1:]
    need = ("Calls", "Bid", "Ask")
    for side, cols, label in ((left, ("Expiration Date", *need), "call"),
                              (right, ("Puts", "Bid", "Ask"), "put")):
        for c in cols:
            if c not in side:
                raise ValueError(f"{name}, line {hline}: missing {label} column {c!r} in the "
                                 "header")
    i_exp = left.index("Expiration Date")
    i_csym, i_cbid, i_cask = left.index("Calls"), left.index("Bid"), left.index("Ask")
    i_psym = ks + 1 + right.index("Puts")
    i_pbid, i_pask = ks + 1 + right.index("Bid"), ks + 1 + right.index("Ask")
    out = ParsedChain(quote_time, spot)
    for where, row in _data_rows(lines, first + 3, name, len(header)):
        expiry = parse_date(row[i_exp], what="'Expiration Date'", where=where)
        strike = _parse_float(row[ks], column="Strike", where=where)
        if not strike > 0:
            raise ValueError(f"{where}column 'Strike': {row[ks]!r} is not a positive number")
        for i_sym, i_bid, i_ask, is_call in ((i_csym, i_cbid, i_cask, True),
                                             (i_psym, i_pbid, i_pask, False)):
            m = _OCC.match(row[i_sym])
            if m is None:
                col = "Calls" if is_call else "Puts"
                raise ValueError(f"{where}column {col!r}: {row[i_sym]!r} is not an OCC symbol "
                                 "like 'SPXW230609C04300000'")
            root = m.group(1)
            out.contracts.append(_Contract(
                expiry, root, _default_settlement(root), strike, is_call,
                _parse_float(row[i_bid], column="Bid", where=where),
                _parse_float(row[i_ask], column="Ask", where=where)))
    return out


def read_normalized(path: Path, lines: list[list[str]], first: int) -> ParsedChain:
    """Normalized layout; ``lines[first]`` is the header (0-based index)."""
    name = str(path)
    header = [h.strip().lower() for h in lines[first]]
    missing = [c for c in NORMALIZED_REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{name}, line {first + 1}: missing column(s) {missing}; the header has {header}")
    col = {c: header.index(c) for c in header}
    times: list[dt.datetime] = []
    spot = float("nan")
    out = ParsedChain(dt.datetime.min, spot)
    for where, row in _data_rows(lines, first + 1, name, len(header)):
        qd = parse_date(row[col["quote_date"]], what="'quote_date'", where=where)
        clock = dt.time(16, 0)
        if "quote_time_et" in col and row[col["quote_time_et"]].strip():
            text = row[col["quote_time_et"]].strip()
            for fmt in ("%H:%M", "%H:%M:%S"):
                try:
                    clock = dt.datetime.strptime(text, fmt).time()
                    break
                except ValueError:
                    continue
            else:
                raise ValueError(f"{where}column 'quote_time_et': {text!r} is not HH:MM or "
                                 "HH:MM:SS")
        qt = dt.datetime.combine(qd, clock, tzinfo=EASTERN)
        times.append(qt)
        if "spot" in col and np.isnan(spot) and row[col["spot"]].strip():
            spot = _parse_float(row[col["spot"]], column="spot", where=where)
        root = ""
        if "root" in col:
            root = row[col["root"]].strip()
        if not root and "option_symbol" in col:
            m = _OCC.match(row[col["option_symbol"]])
            root = m.group(1) if m else ""
        if not root and "underlying" in col:
            root = row[col["underlying"]].strip()
        root = root or "?"
        settle = row[col["settlement"]].strip().upper() if "settlement" in col else ""
        if settle == "":
            settle = _default_settlement(root)
        if settle not in ("AM", "PM"):
            raise ValueError(f"{where}column 'settlement': {settle!r} is not AM or PM")
        kind = row[col["type"]].strip().upper()
        if kind not in ("C", "P", "CALL", "PUT"):
            raise ValueError(f"{where}column 'type': {row[col['type']]!r} is not C or P")
        strike = _parse_float(row[col["strike"]], column="strike", where=where)
        if not strike > 0:
            raise ValueError(f"{where}column 'strike': {row[col['strike']]!r} is not a positive "
                             "number")
        out.contracts.append(_Contract(
            parse_date(row[col["expiry"]], what="'expiry'", where=where), root, settle, strike,
            kind.startswith("C"),
            _parse_float(row[col["bid"]], column="bid", where=where),
            _parse_float(row[col["ask"]], column="ask", where=where), qt))
    if not times:
        raise ValueError(f"{name}: no data rows after the header")
    out.quote_time = max(times)
    out.spot = spot
    return out
