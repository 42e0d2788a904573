"""One payoff library for every engine.

A payoff evaluates on paths whose last axis is the dates, ``paths.shape == (..., N+1)``, so the same
``AsianCall(strike=1.0)`` prices on the MMOT grid and on Monte Carlo paths. Each payoff also
declares the *statistic* it needs for state augmentation (DESIGN §2.3): the payoff is
``terminal(X_T, S_T)`` where T is its last date and S_t follows

    S_{t_first} = statistic.initial(X_{t_first}),  S_{t+1} = statistic.update(t+1, S_t, X_{t+1}),

with ``kind`` one of

* ``"none"``  no state: the payoff depends on X at its last date only;
* ``"sum"``   running weighted sum  S_t = sum_{d_i <= t} w_i X_{d_i}   (Asian);
* ``"max"`` / ``"min"``  running max / min over the monitoring dates (lookback, barrier);
* ``"value"`` the value X_{d_0} remembered from an earlier date (forward start);
* ``"hit"``   barrier flag 1{X_d crossed the level at some monitoring date d <= t}.

Payoffs whose value is a sum of terms c_t(X_t, X_{t+1}) also return them from ``pairwise`` so the
MMOT engine can decompose the problem per period (DESIGN §2.2).

Strikes and levels are in the units of the paths (forward moneyness on MMOT grids, so ``strike=1``
is at the money). Dates are row indices 0..N; ``None`` takes the documented default once the number
of dates is known.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = [
    "Statistic",
    "Payoff",
    "EuropeanCall",
    "EuropeanPut",
    "ForwardStartCall",
    "ForwardStartStraddle",
    "AsianCall",
    "AsianPut",
    "LookbackCall",
    "LookbackPut",
    "BarrierCall",
    "BarrierPut",
    "SumSquaredIncrements",
    "make_payoff",
    "check_payoff",
    "payoff_params",
    "required_params",
    "PAYOFF_NAMES",
]

PairwiseTerm = tuple[int, Callable[[np.ndarray, np.ndarray], np.ndarray]]

STATISTIC_KINDS = ("none", "sum", "max", "min", "value", "hit")


@dataclass(frozen=True)
class Statistic:
    """A path statistic S_t updated date by date, resolved for a given number of dates.

    Attributes
    ----------
    kind : str
        One of ``"none"``, ``"sum"``, ``"max"``, ``"min"``, ``"value"``, ``"hit"``.
    dates : tuple of int
        Dates that feed the statistic (sorted). Empty for ``"none"``.
    weights : tuple of float
        Weights of the running sum, one per date (``"sum"`` only).
    level : float or None
        Barrier level (``"hit"`` only).
    direction : str or None
        ``"up"`` (hit when X >= level) or ``"down"`` (hit when X <= level); ``"hit"`` only.
    """

    kind: str
    dates: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    level: float | None = None
    direction: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in STATISTIC_KINDS:
            raise ValueError(f"statistic kind must be one of {STATISTIC_KINDS}, got {self.kind!r}")
        if list(self.dates) != sorted(set(self.dates)):
            raise ValueError(f"statistic dates must be increasing and distinct, got {self.dates}")
        if self.kind == "sum" and len(self.weights) != len(self.dates):
            raise ValueError(
                f"sum statistic needs one weight per date: {len(self.dates)} dates, "
                f"{len(self.weights)} weights"
            )
        if self.kind == "hit" and self.direction not in ("up", "down"):
            raise ValueError(f"hit statistic direction must be 'up' or 'down', got {self.direction!r}")

    @property
    def first_date(self) -> int | None:
        """First date feeding the statistic (the state is trivial before it); None for 'none'."""
        return self.dates[0] if self.dates else None

    def initial(self, x: np.ndarray) -> np.ndarray:
        """S at the first statistic date, given X there (shape-preserving)."""
        x = np.asarray(x, dtype=float)
        if self.kind == "sum":
            return self.weights[0] * x
        if self.kind in ("max", "min", "value"):
            return x.copy()
        if self.kind == "hit":
            return self._hit(x).astype(float)
        return np.zeros_like(x)

    def update(self, date: int, s: np.ndarray, x: np.ndarray) -> np.ndarray:
        """S_date from S_{date-1} and X_date (no change if ``date`` does not feed the statistic)."""
        s = np.asarray(s, dtype=float)
        x = np.asarray(x, dtype=float)
        if date not in self.dates or date == self.first_date:
            return np.broadcast_to(s, np.broadcast_shapes(s.shape, x.shape)).copy()
        if self.kind == "sum":
            return s + self.weights[self.dates.index(date)] * x
        if self.kind == "max":
            return np.maximum(s, x)
        if self.kind == "min":
            return np.minimum(s, x)
        if self.kind == "hit":
            return np.maximum(s, self._hit(x).astype(float))
        return np.broadcast_to(s, np.broadcast_shapes(s.shape, x.shape)).copy()  # "value"

    def evaluate(self, paths: np.ndarray, until: int) -> np.ndarray:
        """S_until along ``paths`` (shape (..., N+1)); zeros if no date <= until feeds it."""
        paths = np.asarray(paths, dtype=float)
        first = self.first_date
        if first is None or first > until:
            return np.zeros(paths.shape[:-1])
        s = self.initial(paths[..., first])
        for d in range(first + 1, until + 1):
            s = self.update(d, s, paths[..., d])
        return s

    def _hit(self, x: np.ndarray) -> np.ndarray:
        return x >= self.level if self.direction == "up" else x <= self.level


def _resolve_dates(dates: Sequence[int] | None, default: range, n_dates: int, what: str
                   ) -> tuple[int, ...]:
    out = tuple(default) if dates is None else tuple(int(d) for d in dates)
    if not out:
        raise ValueError(f"{what} needs at least one date, got {dates!r}")
    if list(out) != sorted(set(out)):
        raise ValueError(f"{what} must be increasing and distinct, got {out}")
    if out[0] < 0 or out[-1] >= n_dates:
        raise ValueError(f"{what} {out} out of range for {n_dates} dates (0..{n_dates - 1})")
    return out


def _check_date(value: int, n_dates: int, name: str) -> int:
    if not 0 <= value < n_dates:
        raise ValueError(f"{name}={value} out of range for {n_dates} dates (0..{n_dates - 1})")
    return value


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_real(value, name: str) -> None:
    """``value`` must be a finite real number (not a bool, a string or None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not np.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")


def check_payoff(payoff: object) -> Payoff:
    """``payoff`` if it is a ``Payoff``; the package's one ``TypeError`` otherwise (the engines
    call this at their public boundary)."""
    if not isinstance(payoff, Payoff):
        raise TypeError(f"payoff must be a Payoff, got {type(payoff).__name__}")
    return payoff


def _check_paths(paths: np.ndarray) -> np.ndarray:
    paths = np.asarray(paths, dtype=float)
    if paths.ndim < 1 or paths.shape[-1] < 1:
        raise ValueError(f"paths must have shape (..., N+1), got {paths.shape}")
    return paths


@dataclass(frozen=True)
class Payoff(ABC):
    """Base class: a payoff f(X_T, S_T) of the path, with T = ``last_date(n_dates)``.

    Subclasses implement ``statistic``, ``last_date`` and ``terminal``; ``evaluate`` is generic.
    """

    name = "payoff"

    def __post_init__(self) -> None:
        """Check the parameters at construction (a ``ValueError`` naming the bad one)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue  # the documented default, resolved once the number of dates is known
            if f.name in ("strike", "barrier"):
                _check_real(value, f.name)
            elif f.name in ("date", "t1", "t2"):
                if not _is_int(value):
                    raise ValueError(f"{f.name} must be a date index (int), got {value!r}")
            elif f.name == "dates":
                if isinstance(value, str | bytes) or not isinstance(value, Sequence) or \
                        not all(_is_int(d) for d in value):
                    raise ValueError(f"dates must be a sequence of date indices (ints), "
                                     f"got {value!r}")
            elif f.name == "weights":
                if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                    raise ValueError(f"weights must be a sequence of numbers, got {value!r}")
                for w in value:
                    _check_real(w, "weights")

    def statistic(self, n_dates: int) -> Statistic:
        """The statistic this payoff needs on a path with ``n_dates`` dates."""
        return Statistic("none")

    def last_date(self, n_dates: int) -> int:
        """The date at which the payoff is known (default: the last date N)."""
        return n_dates - 1

    @abstractmethod
    def terminal(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Payoff from X at the last date and the statistic there (broadcasting)."""

    def pairwise(self, n_dates: int) -> list[PairwiseTerm] | None:
        """Terms (t, c_t) with payoff = sum_t c_t(X_t, X_{t+1}), or None if not decomposable."""
        return None

    def own_dates(self, n_dates: int) -> tuple[int, ...] | None:
        """The dates this payoff reads, in order, when a date between them is not read, else
        None: the relaxation that drops the dates in between (``deepquant.mmot.relaxed``)."""
        return None

    def on_dates(self, dates: Sequence[int]) -> Payoff:
        """The same payoff on the marginals of ``dates`` alone (increasing, holding every date
        of ``own_dates``): its date indices renumbered into positions in ``dates``."""
        raise ValueError(f"payoff {self.name!r} reads every date: it has no relaxation")

    def evaluate(self, paths: np.ndarray) -> np.ndarray:
        """Payoff on ``paths`` of shape (..., N+1); returns shape (...)."""
        paths = _check_paths(paths)
        n_dates = paths.shape[-1]
        last = self.last_date(n_dates)
        stat = self.statistic(n_dates)
        return self.terminal(paths[..., last], stat.evaluate(paths, last))

    __call__ = evaluate

    def on_grid(self, method: Callable[..., np.ndarray], *args: np.ndarray) -> np.ndarray:
        """``method(*args)`` (``terminal``, ``evaluate`` or a ``pairwise`` term of this payoff
        on an MMOT grid or its paths) as a float array.

        The one check of payoff values on the grid: a ``ValueError`` naming the payoff, its
        parameters and the largest level when a value is not finite (``forward-start-straddle``
        with ``strike=1e308`` overflows to inf at a grid point above 1), before an LP or a solver
        sees it; numpy's overflow warnings are silenced since the error says it.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(method(*args), dtype=float)
        if np.all(np.isfinite(out)):
            return out
        bad = out[~np.isfinite(out)].flat[0]
        given = {f.name: getattr(self, f.name) for f in fields(self)
                 if getattr(self, f.name) is not None}
        params = ", ".join(f"{k}={v!r}" for k, v in given.items())
        # the largest level or weight is the one to blame (the grid itself is finite)
        sizes = {k: float(np.max(np.abs(v))) for k, v in given.items()
                 if k in ("strike", "barrier", "weights")}
        worst = max(sizes, key=sizes.get) if sizes else None
        culprit = f"{worst} {given[worst]!r} is too large for " if worst else ""
        raise ValueError(f"{culprit}payoff {self.name!r} ({params}): it evaluates to {bad} on "
                         "the grid")

    def pairwise_costs(self, n_dates: int, grid: np.ndarray) -> dict[int, np.ndarray] | None:
        """The ``pairwise`` terms on ``grid``, summed per period and checked by ``on_grid``.

        Returns {t: c_t(grid[:, None], grid[None, :])} of shape (M, M) each, periods increasing;
        None when the payoff is not pairwise on ``n_dates`` dates.
        """
        terms = self.pairwise(n_dates)
        if terms is None:
            return None
        grid = np.asarray(grid, dtype=float)
        m = grid.size
        out: dict[int, np.ndarray] = {}
        for t, fn in terms:
            c = np.broadcast_to(self.on_grid(fn, grid[:, None], grid[None, :]), (m, m))
            out[int(t)] = self.on_grid(np.add, out[int(t)], c) if int(t) in out else c.copy()
        return dict(sorted(out.items()))


# ---------------------------------------------------------------------------- Europeans
@dataclass(frozen=True)
class _European(Payoff):
    strike: float = 1.0
    date: int | None = None  # default: the last date

    def last_date(self, n_dates: int) -> int:
        return _check_date(n_dates - 1 if self.date is None else self.date, n_dates, "date")

    def pairwise(self, n_dates: int) -> list[PairwiseTerm] | None:
        d = self.last_date(n_dates)
        if d == 0:
            return None
        return [(d - 1, lambda x, y: self.terminal(y, 0.0) + 0.0 * x)]


@dataclass(frozen=True)
class EuropeanCall(_European):
    """(X_d - K)^+ at one date d (default the last)."""

    name = "european-call"

    def terminal(self, x, s):
        return np.maximum(np.asarray(x, dtype=float) - self.strike, 0.0)


@dataclass(frozen=True)
class EuropeanPut(_European):
    """(K - X_d)^+ at one date d (default the last)."""

    name = "european-put"

    def terminal(self, x, s):
        return np.maximum(self.strike - np.asarray(x, dtype=float), 0.0)


# ---------------------------------------------------------------------------- forward start
@dataclass(frozen=True)
class _ForwardStart(Payoff):
    strike: float = 1.0  # relative strike k: payoff on X_{t2} - k X_{t1}
    t1: int = 0
    t2: int | None = None  # default: the last date

    def _dates(self, n_dates: int) -> tuple[int, int]:
        t2 = n_dates - 1 if self.t2 is None else self.t2
        _check_date(self.t1, n_dates, "t1")
        _check_date(t2, n_dates, "t2")
        if not self.t1 < t2:
            raise ValueError(f"forward start needs t1 < t2, got t1={self.t1}, t2={t2}")
        return self.t1, t2

    def statistic(self, n_dates: int) -> Statistic:
        return Statistic("value", dates=(self._dates(n_dates)[0],))

    def last_date(self, n_dates: int) -> int:
        return self._dates(n_dates)[1]

    def pairwise(self, n_dates: int) -> list[PairwiseTerm] | None:
        t1, t2 = self._dates(n_dates)
        if t2 != t1 + 1:
            return None
        return [(t1, lambda x, y: self.terminal(y, x))]

    def own_dates(self, n_dates: int) -> tuple[int, ...] | None:
        t1, t2 = self._dates(n_dates)
        return None if t2 == t1 + 1 else (t1, t2)

    def on_dates(self, dates: Sequence[int]) -> Payoff:
        if isinstance(dates, str | bytes) or not isinstance(dates, Sequence) or not dates \
                or not all(_is_int(d) for d in dates):
            raise ValueError(f"dates must be increasing date indices, got {dates!r}")
        dates = [int(d) for d in dates]
        t2 = dates[-1] if self.t2 is None else self.t2
        if self.t1 not in dates or t2 not in dates or dates != sorted(set(dates)):
            raise ValueError(f"dates must be increasing and hold t1={self.t1} and t2={t2}, got "
                             f"{dates!r}")
        return replace(self, t1=dates.index(self.t1), t2=dates.index(t2))


@dataclass(frozen=True)
class ForwardStartCall(_ForwardStart):
    """(X_{t2} - k X_{t1})^+ for dates t1 < t2 (default t1=0, t2=N)."""

    name = "forward-start-call"

    def terminal(self, x, s):
        return np.maximum(np.asarray(x, dtype=float) - self.strike * np.asarray(s), 0.0)


@dataclass(frozen=True)
class ForwardStartStraddle(_ForwardStart):
    """|X_{t2} - k X_{t1}| for dates t1 < t2 (default t1=0, t2=N)."""

    name = "forward-start-straddle"

    def terminal(self, x, s):
        return np.abs(np.asarray(x, dtype=float) - self.strike * np.asarray(s))


# ---------------------------------------------------------------------------- Asian
@dataclass(frozen=True)
class _Asian(Payoff):
    strike: float = 1.0
    dates: tuple[int, ...] | None = None  # default: 1..N
    weights: tuple[float, ...] | None = None  # default: equal, summing to 1

    def statistic(self, n_dates: int) -> Statistic:
        dates = _resolve_dates(self.dates, range(1, n_dates) if n_dates > 1 else range(1),
                               n_dates, "averaging dates")
        if self.weights is None:
            weights = (1.0 / len(dates),) * len(dates)
        else:
            weights = tuple(float(w) for w in self.weights)
            if len(weights) != len(dates) or not all(np.isfinite(weights)):
                raise ValueError(
                    f"weights must be {len(dates)} finite numbers (one per averaging date), "
                    f"got {self.weights!r}"
                )
        return Statistic("sum", dates=dates, weights=weights)

    def last_date(self, n_dates: int) -> int:
        return self.statistic(n_dates).dates[-1]


@dataclass(frozen=True)
class AsianCall(_Asian):
    """(sum_i w_i X_{d_i} - K)^+, arithmetic average over dates d_i (default 1..N, w_i = 1/N).

    Weights w_i = F(0, t_i) / (n F_ref) turn a moneyness average into a spot average.
    """

    name = "asian-call"

    def terminal(self, x, s):
        return np.maximum(np.asarray(s, dtype=float) - self.strike, 0.0)


@dataclass(frozen=True)
class AsianPut(_Asian):
    """(K - sum_i w_i X_{d_i})^+ (see ``AsianCall``)."""

    name = "asian-put"

    def terminal(self, x, s):
        return np.maximum(self.strike - np.asarray(s, dtype=float), 0.0)


# ---------------------------------------------------------------------------- lookback
@dataclass(frozen=True)
class _Lookback(Payoff):
    strike: float = 1.0
    dates: tuple[int, ...] | None = None  # default: 0..N
    _kind = "max"

    def statistic(self, n_dates: int) -> Statistic:
        dates = _resolve_dates(self.dates, range(n_dates), n_dates, "monitoring dates")
        return Statistic(self._kind, dates=dates)

    def last_date(self, n_dates: int) -> int:
        return self.statistic(n_dates).dates[-1]


@dataclass(frozen=True)
class LookbackCall(_Lookback):
    """(max_d X_d - K)^+ over monitoring dates (default 0..N)."""

    name = "lookback-call"
    _kind = "max"

    def terminal(self, x, s):
        return np.maximum(np.asarray(s, dtype=float) - self.strike, 0.0)


@dataclass(frozen=True)
class LookbackPut(_Lookback):
    """(K - min_d X_d)^+ over monitoring dates (default 0..N)."""

    name = "lookback-put"
    _kind = "min"

    def terminal(self, x, s):
        return np.maximum(self.strike - np.asarray(s, dtype=float), 0.0)


# ---------------------------------------------------------------------------- barriers
BARRIER_TYPES = ("up-and-out", "up-and-in", "down-and-out", "down-and-in")


@dataclass(frozen=True)
class _Barrier(Payoff):
    strike: float = 1.0
    barrier: float = 1.2
    barrier_type: str = "up-and-out"
    dates: tuple[int, ...] | None = None  # monitoring dates, default 0..N

    def __post_init__(self) -> None:
        if self.barrier_type not in BARRIER_TYPES:
            raise ValueError(f"barrier_type must be one of {BARRIER_TYPES}, got {self.barrier_type!r}")
        super().__post_init__()

    def statistic(self, n_dates: int) -> Statistic:
        dates = _resolve_dates(self.dates, range(n_dates), n_dates, "monitoring dates")
        direction = self.barrier_type.split("-")[0]
        return Statistic("hit", dates=dates, level=float(self.barrier), direction=direction)

    def last_date(self, n_dates: int) -> int:
        self.statistic(n_dates)  # validates the dates
        return n_dates - 1

    def _alive(self, s):
        hit = np.asarray(s, dtype=float) > 0.5
        return ~hit if self.barrier_type.endswith("out") else hit

    @abstractmethod
    def _vanilla(self, x):
        """The vanilla payoff that the barrier switches on or off."""

    def terminal(self, x, s):
        return np.where(self._alive(s), self._vanilla(np.asarray(x, dtype=float)), 0.0)


@dataclass(frozen=True)
class BarrierCall(_Barrier):
    """(X_N - K)^+ knocked in or out when X_d crosses the barrier at a monitoring date."""

    name = "barrier-call"

    def _vanilla(self, x):
        return np.maximum(x - self.strike, 0.0)


@dataclass(frozen=True)
class BarrierPut(_Barrier):
    """(K - X_N)^+ knocked in or out when X_d crosses the barrier at a monitoring date."""

    name = "barrier-put"

    def _vanilla(self, x):
        return np.maximum(self.strike - x, 0.0)


# ---------------------------------------------------------------------------- variance swap leg
@dataclass(frozen=True)
class SumSquaredIncrements(Payoff):
    """sum_{t=0}^{N-1} (X_{t+1} - X_t)^2: model-free, equal to sum_t (E[X_{t+1}^2] - E[X_t^2])."""

    name = "sum-squared-increments"

    def pairwise(self, n_dates: int) -> list[PairwiseTerm] | None:
        return [(t, lambda x, y: (np.asarray(y) - np.asarray(x)) ** 2) for t in range(n_dates - 1)]

    def evaluate(self, paths: np.ndarray) -> np.ndarray:
        paths = _check_paths(paths)
        return np.sum(np.diff(paths, axis=-1) ** 2, axis=-1)

    __call__ = evaluate

    def terminal(self, x, s):
        raise ValueError("sum-squared-increments is pairwise; use pairwise() or evaluate()")


# ---------------------------------------------------------------------------- factory
_FACTORIES: dict[str, Callable[..., Payoff]] = {
    "european-call": EuropeanCall,
    "european-put": EuropeanPut,
    "forward-start-call": ForwardStartCall,
    "forward-start-straddle": ForwardStartStraddle,
    "asian-call": AsianCall,
    "asian-put": AsianPut,
    "lookback-call": LookbackCall,
    "lookback-put": LookbackPut,
    "sum-squared-increments": SumSquaredIncrements,
}
for _kind in BARRIER_TYPES:
    _FACTORIES[f"{_kind}-call"] = (lambda k: lambda **kw: BarrierCall(barrier_type=k, **kw))(_kind)
    _FACTORIES[f"{_kind}-put"] = (lambda k: lambda **kw: BarrierPut(barrier_type=k, **kw))(_kind)

PAYOFF_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def required_params(name: str) -> tuple[str, ...]:
    """Parameters a user must state for the payoff ``name`` (the command line requires them
    rather than fall back on the library defaults): ``strike`` for every payoff with a strike
    except the forward starts (relative strike, 1 = at the money), and ``barrier`` for the
    barrier payoffs."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown payoff {name!r}; choose one of {', '.join(PAYOFF_NAMES)}")
    if name == "sum-squared-increments" or name.startswith("forward-start"):
        return ()
    if name.split("-")[-1] in ("call", "put") and "-and-" in name:
        return ("strike", "barrier")
    return ("strike",)


def payoff_params(payoff: Payoff) -> dict:
    """The parameters of a payoff as plain values (JSON-ready), defaults included."""
    out = {}
    for f in fields(payoff):
        v = getattr(payoff, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def make_payoff(name: str, **params) -> Payoff:
    """Build a payoff by its CLI name, e.g. ``make_payoff("asian-call", strike=1.0)``.

    Parameters that are ``None`` are dropped so the payoff's defaults apply.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown payoff {name!r}; choose one of {', '.join(PAYOFF_NAMES)}")
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return _FACTORIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"payoff {name!r} does not take these parameters: {params}: {exc}") from exc

