"""Bid-ask bands of listed options in forward moneyness, and whether a law on a grid fits them.

Quotes are normalized as in ``deepquant.market.calibrate``: k = K / F, prices divided by D F
(undiscounted prices of (X - k)^+ and (k - X)^+ with X = S_t / F(0, t)). A zero or missing bid is
no lower constraint; a missing ask (one-sided quote) is no upper constraint. ``load_bands`` takes
such quotes from a chain too (the loader keeps them apart from the two-sided quotes the
calibration uses: ``deepquant.market.quotes.OneSidedQuotes``). ``check_bands``
finds the law sequence on a grid closest to the bands (the band term of the calibration
program with lam = 0, an LP): when it misses a band, no martingale on that grid fits the quotes,
and its violations name the expiries and strikes to repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

__all__ = ["QuoteBands", "BandCheck", "band_changes", "check_bands", "check_grid_span", "check_quote_grid",
           "describe_span_misses", "laws_in_bands", "quote_grid", "load_bands", "span_misses"]


@dataclass(frozen=True, eq=False)
class QuoteBands:
    """Price bands of listed calls and puts at S expiries, in forward-moneyness units.

    Attributes
    ----------
    labels : tuple of str, length S
    times : ndarray, shape (S,)
        Year fractions, strictly increasing.
    k, is_call, bid, ask : tuple of S ndarrays, shape (Q_s,) each
        Strikes K / F, call flags, bids and asks divided by D F. A bid of 0 or NaN: no lower
        constraint; an ask of inf or NaN: no upper constraint.
    """

    labels: tuple[str, ...]
    times: np.ndarray
    k: tuple[np.ndarray, ...]
    is_call: tuple[np.ndarray, ...]
    bid: tuple[np.ndarray, ...]
    ask: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        n = len(self.labels)
        object.__setattr__(self, "times", np.asarray(self.times, dtype=float).reshape(-1))
        if n < 1 or self.times.size != n or any(len(a) != n for a in
                                                (self.k, self.is_call, self.bid, self.ask)):
            raise ValueError(f"QuoteBands needs one label, time and quote array per expiry, got "
                             f"{n} labels and {self.times.size} times")
        if np.any(np.diff(self.times) <= 0) or not self.times[0] > 0:
            raise ValueError(f"times must be > 0 and strictly increasing, got {self.times!r}")
        ks, cs, bs, as_ = [], [], [], []
        for s in range(n):
            k = np.asarray(self.k[s], dtype=float).reshape(-1)
            c = np.asarray(self.is_call[s], dtype=bool).reshape(-1)
            b = np.nan_to_num(np.asarray(self.bid[s], dtype=float).reshape(-1), nan=0.0)
            a = np.asarray(self.ask[s], dtype=float).reshape(-1)
            a = np.where(np.isnan(a), np.inf, a)
            if not (k.shape == c.shape == b.shape == a.shape):
                raise ValueError(f"expiry {self.labels[s]}: k, is_call, bid, ask shapes differ")
            if np.any(~np.isfinite(k)) or np.any(k <= 0):
                raise ValueError(f"expiry {self.labels[s]}: strikes must be finite and > 0")
            bad = np.flatnonzero((b < 0) | ~np.isfinite(b) | (b > a))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"bid of expiry {self.labels[s]} at k={k[i]:.6g} is {b[i]!r} "
                                 f"with ask {a[i]!r}: bids must be finite, >= 0 and <= the ask")
            ks.append(k)
            cs.append(c)
            bs.append(b)
            as_.append(a)
        for name, v in (("k", ks), ("is_call", cs), ("bid", bs), ("ask", as_)):
            object.__setattr__(self, name, tuple(v))

    @property
    def n_expiries(self) -> int:
        return len(self.labels)

    @classmethod
    def from_quotes(cls, quotes) -> QuoteBands:
        """From a sequence of ``deepquant.market.parity.SliceQuotes`` (normalized quotes)."""
        quotes = list(quotes)
        return cls(tuple(q.label for q in quotes), np.array([q.t for q in quotes]),
                   tuple(q.k for q in quotes), tuple(q.is_call for q in quotes),
                   tuple(q.bid for q in quotes), tuple(q.ask for q in quotes))

    def payoffs(self, s: int, x: np.ndarray) -> np.ndarray:
        """c_i(x) of the quotes of expiry s at points x: shape (Q_s, len(x))."""
        k = self.k[s][:, None]
        d = np.asarray(x, dtype=float)[None, :] - k
        return np.where(self.is_call[s][:, None], np.maximum(d, 0.0), np.maximum(-d, 0.0))

    def restrict(self, lo: float, hi: float) -> tuple[QuoteBands, int]:
        """Quotes with lo < k < hi only, and how many were left out."""
        keep = [(k > lo) & (k < hi) for k in self.k]
        out = QuoteBands(self.labels, self.times, *(
            tuple(a[m] for a, m in zip(arrs, keep))
            for arrs in (self.k, self.is_call, self.bid, self.ask)))
        return out, int(sum((~m).sum() for m in keep))

    def thinned(self, grid: np.ndarray) -> QuoteBands:
        """Per expiry and type, only the quote whose strike is nearest each grid point (within
        half a cell): on a coarse grid the dense listed strikes pin the law down (its call curve
        is linear between grid points), while the nearest quotes bound it only at the nodes.
        Nearest is taken per bound: the nearest quote with a bid and the nearest with an ask
        (the same quote when it is two-sided), so an ask-only quote (zero bid) never displaces
        the nearest lower bound, nor a bid-only quote the nearest upper bound."""
        g = np.asarray(grid, dtype=float)
        cell = np.diff(g).min() / 2
        keep = []
        for k, c, b, a in zip(self.k, self.is_call, self.bid, self.ask):
            mask = np.zeros(k.size, dtype=bool)
            for flag in (True, False):
                for has_bound in (b > 0, np.isfinite(a)):
                    idx = np.flatnonzero((c == flag) & has_bound)
                    if idx.size == 0:
                        continue
                    near = np.abs(k[idx][None, :] - g[:, None])  # (M, n)
                    best = np.argmin(near, axis=1)
                    ok = near[np.arange(g.size), best] <= cell
                    mask[idx[best[ok]]] = True
            keep.append(mask)
        return QuoteBands(self.labels, self.times, *(
            tuple(a[m] for a, m in zip(arrs, keep))
            for arrs in (self.k, self.is_call, self.bid, self.ask)))

    def widened(self, prices: Sequence[np.ndarray], pad: float = 1e-9) -> QuoteBands:
        """Bands widened to contain ``prices`` (one array per expiry), with ``pad`` room."""
        bid = tuple(np.where(p < b, np.maximum(p - pad, 0.0), b)
                    for p, b in zip(prices, self.bid))
        ask = tuple(np.where(p > a, p + pad, a) for p, a in zip(prices, self.ask))
        return QuoteBands(self.labels, self.times, self.k, self.is_call, bid, ask)


@dataclass(frozen=True, eq=False)
class BandCheck:
    """Result of ``check_bands``: the closest law to the bands on the grid.

    ``violation[s]`` (Q_s,) is each quote's distance outside its band (price units) under that
    law, ``prices[s]`` its model prices, ``laws`` (S, M) the laws; ``feasible`` when the total
    violation is below ``tol``."""

    feasible: bool
    total: float
    violation: tuple[np.ndarray, ...]
    prices: tuple[np.ndarray, ...]
    laws: np.ndarray
    tol: float

    def culprits(self, bands: QuoteBands) -> list[tuple[str, list[str]]]:
        """(expiry label, ['C 1.05: 0.0123 above ask', ...]) for every violated quote."""
        out = []
        for s, v in enumerate(self.violation):
            bad = np.flatnonzero(v > self.tol)
            if bad.size:
                items = []
                for i in bad:
                    side = "below bid" if self.prices[s][i] < bands.bid[s][i] else "above ask"
                    items.append(f"{'C' if bands.is_call[s][i] else 'P'} "
                                 f"{bands.k[s][i]:.4f}: {v[i]:.3g} {side}")
                out.append((bands.labels[s], items))
        return out


def check_bands(bands: QuoteBands, grid: np.ndarray, *, tol: float = 1e-8) -> BandCheck:
    """Is there a sequence of laws on ``grid`` (mean 1, increasing in convex order) pricing every
    quote inside its band? One LP (HiGHS) minimising sum_i (under_i + over_i) / w_i, the band
    violations weighted by the half-spread w_i (the calibration's band term); convex order is
    exact for laws on the grid (call prices non-decreasing in t at every grid point)."""
    x = np.asarray(grid, dtype=float)
    m, n_s = x.size, bands.n_expiries
    calls = np.maximum(x[None, :] - x[:, None], 0.0)  # (M, M): C(x_j) = sum_i l(i) calls[j, i]
    n_q = [k.size for k in bands.k]
    nl, nq = n_s * m, int(sum(n_q))
    rows_eq = sparse.block_diag([np.vstack([np.ones(m), x])] * n_s)
    a_eq = sparse.hstack([rows_eq, sparse.csr_matrix((2 * n_s, 2 * nq))])
    b_eq = np.ones(2 * n_s)
    ub, b_ub = [], []
    for s in range(n_s - 1):  # C_s - C_{s+1} <= 0
        ub.append(sparse.hstack([sparse.csr_matrix((m, s * m)), sparse.csr_matrix(calls),
                                 sparse.csr_matrix(-calls),
                                 sparse.csr_matrix((m, nl - (s + 2) * m + 2 * nq))]).tocsr())
        b_ub.append(np.zeros(m))
    off = 0
    weights = []
    for s in range(n_s):
        c = bands.payoffs(s, x)
        bid, ask = bands.bid[s], bands.ask[s]
        w = np.where(np.isfinite(ask), (ask - bid) / 2, np.maximum(bid / 2, 0.0))
        w = np.maximum(w, 1e-6)
        weights.append(w)
        q = n_q[s]
        idx = np.arange(q)
        under = sparse.csr_matrix((-w, (idx, nl + off + idx)), shape=(q, nl + 2 * nq))
        over = sparse.csr_matrix((-w, (idx, nl + nq + off + idx)), shape=(q, nl + 2 * nq))
        full = sparse.hstack([sparse.csr_matrix((q, s * m)), sparse.csr_matrix(c),
                              sparse.csr_matrix((q, nl - (s + 1) * m + 2 * nq))]).tocsr()
        lo = bid > 0
        ub.append((-full + under)[lo])  # c l + w under >= bid
        b_ub.append(-bid[lo])
        hi = np.isfinite(ask)
        ub.append((full + over)[hi])
        b_ub.append(ask[hi])
        off += q
    cost = np.concatenate([np.zeros(nl), np.ones(2 * nq)])
    res = optimize.linprog(cost, A_ub=sparse.vstack(ub).tocsr(), b_ub=np.concatenate(b_ub),
                           A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=(0, None), method="highs",
                           options=dict(primal_feasibility_tolerance=1e-10))
    if res.status != 0:
        raise RuntimeError(f"check_bands: HiGHS failed ({res.message})")  # always feasible
    laws = np.maximum(res.x[:nl].reshape(n_s, m), 0.0)
    prices, viol = [], []
    for s in range(n_s):
        p = bands.payoffs(s, x) @ laws[s]
        prices.append(p)
        viol.append(np.maximum.reduce([bands.bid[s] - p, p - bands.ask[s], np.zeros(p.size)]))
    total = float(sum(v.sum() for v in viol))
    return BandCheck(total <= tol, total, tuple(viol), tuple(prices), laws, tol)


def band_changes(before: QuoteBands, after: QuoteBands) -> tuple[float, int, float]:
    """(total widening, quotes moved, total price) from ``before`` to ``after`` (the same quotes
    with bands widened): the widening sums each bid's decrease and each finite ask's increase;
    the price sums the asks of ``before``, or the bids where there is no ask."""
    total, moved, price = 0.0, 0, 0.0
    for b0, b1, a0, a1 in zip(before.bid, after.bid, before.ask, after.ask):
        fin = np.isfinite(a0)
        total += float(np.sum(b0 - b1) + np.sum(a1[fin] - a0[fin]))
        moved += int(np.sum((b0 != b1) | (a0 != a1)))
        price += float(np.sum(np.where(fin, a0, b0)))
    return total, moved, price


def span_misses(bands: QuoteBands, grid: np.ndarray) -> list[tuple[float, str]]:
    """The bids that no law of mean 1 on [g_0, g_{M-1}] reaches, however fine the grid: pairs
    (excess, "expiry 1m: C 1.2000 bids 0.3 > 0.05"), largest excess first.

    Among the laws of mean 1 on [g_0, g_{M-1}], the two-point law on the ends has the largest
    call and put prices at every k (its call curve is the chord):

        C_max(k) = (g_{M-1} - k) (1 - g_0) / (g_{M-1} - g_0),
        P_max(k) = (k - g_0) (g_{M-1} - 1) / (g_{M-1} - g_0).

    A bid above that bound (relative tolerance 1e-9) is out of reach of every grid with that
    span: a finer grid cannot help, and a repair has to lower the bid to the bound at least.
    """
    g0, g1 = float(grid[0]), float(grid[-1])
    items = []
    for s in range(bands.n_expiries):
        k, call, bid = bands.k[s], bands.is_call[s], bands.bid[s]
        top = np.maximum(np.where(call, (g1 - k) * (1.0 - g0), (k - g0) * (g1 - 1.0))
                         / (g1 - g0), 0.0)
        excess = bid - top
        for i in np.flatnonzero(excess > 1e-12 + 1e-9 * bid):
            items.append((float(excess[i]),
                          f"expiry {bands.labels[s]}: {'C' if call[i] else 'P'} {k[i]:.4f} "
                          f"bids {bid[i]:.3g} > {top[i]:.3g}"))
    items.sort(key=lambda it: -it[0])
    return items


def describe_span_misses(items: list[tuple[float, str]], grid: np.ndarray) -> str:
    """One sentence on ``span_misses(bands, grid)`` (at most 4 quotes named)."""
    where = "; ".join(text for _, text in items[:4])
    more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
    return (f"the grid's span [{grid[0]:.6g}, {grid[-1]:.6g}] is too narrow to carry laws that "
            f"price the quotes: {len(items)} bids exceed the most any law of mean 1 on it is "
            f"worth at their strikes ({where}{more}); a finer grid on the same span cannot help, "
            f"and a repair would have to lower these bids by up to {items[0][0]:.3g}")


def check_grid_span(bands: QuoteBands, grid: np.ndarray, *, advice: str) -> None:
    """A ``ValueError`` (``describe_span_misses`` then ``advice``) when some bid is out of reach
    of every law of mean 1 on the span of ``grid`` (``span_misses``)."""
    items = span_misses(bands, grid)
    if items:
        raise ValueError(f"{describe_span_misses(items, grid)}: {advice}")


def check_quote_grid(grid) -> np.ndarray:
    """``grid`` as a float array, or a ``ValueError``: a moneyness grid of the quote problems
    is 1-D, finite, >= 0, strictly increasing, of at least 3 points, with 1 on it strictly
    inside."""
    try:
        grid = np.asarray(grid, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be an array of moneyness points, got {grid!r}") from None
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid)) \
            or np.any(np.diff(grid) <= 0) or not np.any(np.abs(grid - 1) < 1e-12) \
            or not 0 <= grid[0] < 1 < grid[-1]:
        raise ValueError("grid must be strictly increasing with 1 on it strictly inside "
                         "(1-D, finite, >= 0, at least 3 points), got "
                         f"{np.array2string(grid, threshold=12)}")
    return grid


def laws_in_bands(bands: QuoteBands, grid: np.ndarray, value: np.ndarray,
                  reference: np.ndarray, *, tie: float) -> np.ndarray | None:
    """Laws (S, M) on ``grid`` (mean 1, increasing in convex order, exact on the grid) pricing
    every quote inside its band that maximise

        sum_s value[s] @ l_s - tie * sum_s |l_s - reference[s]|_1,

    one LP (HiGHS; ``value`` and ``reference`` (S, M)); None if HiGHS finds no such laws.

    The call prices C_s(x_j) = sum_i l_s(i) (x_i - x_j)^+ at the grid points are variables
    too, tied to the law by its second differences, l_s(j) = (C_{j-1} - C_j) / dx_{j-1} -
    (C_j - C_{j+1}) / dx_j (C = 0 at the last point, l there the last slope), so that convex
    order (C_s <= C_{s+1}) and the quotes (C linear between grid points; a put is C(k) + k - 1
    at mean 1) are rows of 2 entries instead of dense ones (``check_bands``' form): measured
    0.1 s against 0.6-1.0 s at M = 150 (SPX, 5 expiries, ~300 quotes), the same optimum to
    1e-12."""
    if not isinstance(bands, QuoteBands):
        raise TypeError(f"bands must be a QuoteBands, got {type(bands).__name__}")
    x = check_quote_grid(grid)
    m, n_s = x.size, bands.n_expiries
    arrays = {}
    for name, arr in (("value", value), ("reference", reference)):
        try:
            arrays[name] = np.asarray(arr, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real array of shape (S, M) = ({n_s}, {m}), "
                             f"got {type(arr).__name__}") from None
        if arrays[name].shape != (n_s, m) or not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{name} must be a finite array of shape (S, M) = ({n_s}, {m}), "
                             f"got shape {arrays[name].shape}"
                             + ("" if arrays[name].shape != (n_s, m) else " with NaN or inf"))
    value, reference = arrays["value"], arrays["reference"]
    # a negative tie rewards moving away from the reference: the LP is unbounded (no laws)
    if isinstance(tie, bool) or not isinstance(tie, int | float | np.floating) \
            or not np.isfinite(tie) or tie < 0:
        raise ValueError(f"tie must be a finite number >= 0, got {tie!r}")
    nl = n_s * m
    dx = np.diff(x)
    n_cols = 4 * nl  # l, C, d+, d- (l - reference = d+ - d-)
    r, c, v = [], [], []
    row = 0
    for s in range(n_s):
        lc, cc = s * m, nl + s * m
        for j in range(1, m - 1):
            r += [row] * 4
            c += [lc + j, cc + j - 1, cc + j, cc + j + 1]
            v += [-1.0, 1 / dx[j - 1], -1 / dx[j - 1] - 1 / dx[j], 1 / dx[j]]
            row += 1
        r += [row] * 3 + [row + 1]
        c += [lc + m - 1, cc + m - 2, cc + m - 1, cc + m - 1]
        v += [-1.0, 1 / dx[-1], -1 / dx[-1], 1.0]
        row += 2
    a_eq = sparse.vstack([
        sparse.hstack([sparse.block_diag([np.vstack([np.ones(m), x])] * n_s),
                       sparse.csr_matrix((2 * n_s, 3 * nl))]),  # mass 1, mean 1
        sparse.csr_matrix((v, (r, c)), shape=(row, n_cols)),
        sparse.hstack([sparse.eye(nl), sparse.csr_matrix((nl, nl)), -sparse.eye(nl),
                       sparse.eye(nl)])]).tocsr()
    b_eq = np.concatenate([np.ones(2 * n_s), np.zeros(row),
                           np.asarray(reference, dtype=float).ravel()])
    k_cv = (n_s - 1) * m  # C_s - C_{s+1} <= 0
    ub = [sparse.hstack([sparse.csr_matrix((k_cv, nl)),
                         sparse.eye(k_cv, nl) - sparse.eye(k_cv, nl, m),
                         sparse.csr_matrix((k_cv, 2 * nl))])]
    b_ub = [np.zeros(k_cv)]
    for s in range(n_s):
        k = bands.k[s]
        j = np.clip(np.searchsorted(x, k) - 1, 0, m - 2)
        w = (k - x[j]) / dx[j]
        rows = np.tile(np.arange(k.size), 2)
        full = sparse.csr_matrix((np.concatenate([1 - w, w]),
                                  (rows, nl + s * m + np.concatenate([j, j + 1]))),
                                 shape=(k.size, n_cols))
        shift = np.where(bands.is_call[s], 0.0, k - 1.0)
        lo, hi = bands.bid[s] > 0, np.isfinite(bands.ask[s])
        ub += [-full[lo], full[hi]]
        b_ub += [(shift - bands.bid[s])[lo], (bands.ask[s] - shift)[hi]]
    cost = np.concatenate([-np.asarray(value, dtype=float).ravel(), np.zeros(nl),
                           np.full(2 * nl, tie)])
    bounds = [(0, None)] * nl + [(None, None)] * nl + [(0, None)] * (2 * nl)
    res = optimize.linprog(cost, A_ub=sparse.vstack(ub).tocsr(), b_ub=np.concatenate(b_ub),
                           A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs",
                           options=dict(primal_feasibility_tolerance=1e-10))
    if res.status != 0:
        return None
    return np.maximum(res.x[:nl].reshape(n_s, m), 0.0)


def quote_grid(bands: QuoteBands, size: int, *, margin: float = 0.05) -> np.ndarray:
    """Uniform grid of ``size`` points with 1 on it, covering the quoted strikes with ``margin``
    (a fraction of their span) of room on each side (running sums then fall on a lattice).

    Its span follows the strikes of ``bands`` (for ``load_bands``, those with K/F in
    ``fit_range``): a narrow range of strikes gives a grid too narrow to carry the laws, which
    ``check_grid_span`` reports."""
    if int(size) < 5:
        raise ValueError(f"grid_size must be >= 5, got {size!r}")
    kmin = min(float(k.min()) for k in bands.k if k.size)
    kmax = max(float(k.max()) for k in bands.k if k.size)
    pad = margin * (max(kmax, 1.0) - min(kmin, 1.0))
    left, right = 1.0 - min(kmin, 1.0) + pad, max(kmax, 1.0) - 1.0 + pad
    n = int(size) - 1
    a = int(np.clip(round(n * left / (left + right)), 1, n - 1))
    d = max(left / a, right / (n - a))
    return 1.0 + d * np.arange(-a, n - a + 1)


def load_bands(chain, expiries: Sequence[str], *, fit_range=(0.5, 1.6), near_fraction=0.4,
               one_sided: bool = True) -> tuple[QuoteBands, list]:
    """Normalized bands of a chain (path(s) or ``OptionChain``) at ``expiries``: forwards and
    discounts from the put-call parity fit of ``deepquant.market.parity``, k = K/F, prices /(DF).

    The two-sided quotes (0 < bid <= ask) are those of ``normalize_slice``, the calibration's
    input. With ``one_sided`` the contracts the chain loader keeps apart
    (``ChainSlice.one_sided``) are added with the same F, D and ``fit_range``: a zero or missing
    bid with an ask as bid 0 (an upper constraint only), a bid with no ask as ask inf (a lower
    constraint only). The calibration keeps its two-sided filter.

    Returns
    -------
    (QuoteBands, list of SliceQuotes)
        The bands (per expiry sorted by k, call before put) and the two-sided normalized
        quotes.
    """
    from deepquant.market.expiries import select_slices
    from deepquant.market.parity import check_fit_range, fit_parity, normalize_slice
    from deepquant.market.quotes import OptionChain, load_chain

    lo, hi = check_fit_range(fit_range)
    if isinstance(expiries, str):
        expiries = [e.strip() for e in expiries.split(",") if e.strip()]
    ch = chain if isinstance(chain, OptionChain) else load_chain(chain)
    chosen = select_slices(ch, expiries)
    spot = ch.spot if np.isfinite(ch.spot) else None
    quotes = [normalize_slice(sl, fit_parity(sl, spot=spot, near_fraction=near_fraction,
                                             source=ch.path), fit_range=fit_range)
              for sl in chosen]
    parts = [(q.k, q.is_call, q.bid, q.ask) for q in quotes]
    if one_sided:
        parts = [_add_one_sided(part, sl.one_sided, q.forward, q.discount, fit_range)
                 for part, sl, q in zip(parts, chosen, quotes)]
    bands = QuoteBands(tuple(q.label for q in quotes), np.array([q.t for q in quotes]),
                       *(tuple(p[i] for p in parts) for i in range(4)))
    return bands, quotes


def _add_one_sided(part, extra, forward: float, discount: float, fit_range):
    """(k, is_call, bid, ask) of a slice with its one-sided quotes (currency units in
    ``extra``) normalized by F and D F and added, sorted by k (call before put, as
    ``normalize_slice``)."""
    k = np.asarray(extra.strikes, dtype=float) / forward
    keep = (k >= fit_range[0]) & (k <= fit_range[1])
    scale = discount * forward
    ks = np.concatenate([part[0], k[keep]])
    calls = np.concatenate([part[1], np.asarray(extra.is_call, bool)[keep]])
    bid = np.concatenate([part[2], np.asarray(extra.bid, float)[keep] / scale])
    ask = np.concatenate([part[3], np.asarray(extra.ask, float)[keep] / scale])
    order = np.lexsort((~calls, ks))
    return ks[order], calls[order], bid[order], ask[order]
