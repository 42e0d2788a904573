"""A certificate polished by subgradient steps on the exact dual (DESIGN §2.8).

The outer bound of a side is F(u) of its potentials u, swept exactly (``sweep._Sweeper.hard``),
and F is convex and piecewise linear in u. At u the superhedge moves every state (s, x) of
period t to the two points y_j1, y_j2 where its supporting line touches the next values, with
weights lam, 1 - lam (a martingale move); the chain of those moves started from the law of
(S_0, X_0) has laws q_t, and (envelope theorem, ties broken by the sweep)

    g = mu - q   (flat over the supports of dates 1..T)

is a subgradient of F at u: raising u_t(y) by d adds mu_t(y) d to the static part and takes
q_t(y) d off the expected terminal value. Polyak's step towards a level L below the best value
found, u <- u - (F(u) - L) g / |g|^2, needs no smoothing and costs one exact sweep and one
forward pass of the moves. L lies a distance delta below the best F, never below a floor: a
value the optimum cannot be below, in the sweep's sign (the inner value of a chain on the same
grid; a floor above the optimum only shortens the steps, and they stop once the best F
reaches it). delta starts halfway to the floor, grows after a step that comes near its target
and halves after ``STALL`` steps that do not (a variable target value, ``WIDEN``). The step is
taken in a metric that Shor's space dilation contracts along the difference of successive
subgradients (``DILATION``, the r-algorithm's metric with Polyak's step length): the dual is
badly scaled and its subgradients alternate between faces, which plain steps zigzag across. Every
``CHECK_EVERY`` steps the point is certified
(``_Sweeper.certify``: lowered to its lines, swept with the violations measured), so the bound
returned is valid whatever the steps did.

Measured with the first target rule and the sweeps' moves in numpy (Heston, N = 5, M = 150,
from the side's 10 s certificate, one BLAS thread, load 1-2):
the lookback's upper side 0.082612 -> 0.082441 in 0.8 s and 0.082402 in 5.8 s (the certificate
of 60 s of smoothed stages was 0.082370); the Asian's lower side 0.028245 -> 0.028360 in 6 s
(180 s of smoothed stages: 0.028335); 13 monthly dates, the Asian's lower side 0.038026 ->
0.039409 in 20 s (300 s of smoothed stages: 0.039205). Lowering u to its lines before every
step ended lower on the Asian (0.028299 against 0.028360 in 300 steps); levels at 0.25 and
0.75 of the way were no better than 0.5.
"""

from __future__ import annotations

import numbers
import time

import numpy as np
from scipy.linalg import blas

from deepquant.mmot.certified import INNER_RESID_TOL
from deepquant.mmot.markov_inner import _real

__all__ = ["moves_laws", "polish", "polish_positions", "polish_side", "polyak", "position_step"]

LEVEL = 0.5
"""The first target's distance below the best value: this fraction of the way from the best
value (the start's certificate) to the floor."""

STALL = 100
"""Steps without one that comes near its target (``WIDEN``) after which the target's distance
is halved (a target far below the optimum makes every step overshoot). Measured on the
13-point Heston chains of the tests, 1,000 steps from u = 0, share of the start's distance to
the optimum closed with the floor at the optimum / 2% / 10% of the payoff scale below it, for
the rule this replaced (the floor raised to the level after 100 steps without a new best):
never raised, Asian lower 0.98 / 0.91 / 0.41; after 100 steps 0.98 / 0.98 / 0.96 (the other
five sides 0.87-0.9996, within 0.03 of never raising or better); after 20 or 50, 0.79 / 0.83
(lookback lower) and 0.58 / 0.83 (straddle lower) at the exact floor."""

WIDEN = 1.5
"""The target's distance grows by this factor (up to the floor) after a step whose value comes
within half that distance of its target: a variable target value after Goffin and Kiwiel, so a
distance once halved can grow again. The rule it replaced raised the floor for good, and its
steps stalled once the floor passed the optimum. Measured in the pipeline, alternating with
the old rule (load 1.0): 13 monthly dates, M = 150, 60 s per side, two rounds: lower
0.039581, 0.039591 against 0.039491, 0.039501, upper 0.053574, 0.053586 against 0.053621,
0.053596; Heston N = 5, M = 150, 10 s per side, two rounds: every side within 0.02% of the old
rule's (Asian lower 0.028332, 0.028358 against 0.028350, 0.028333; lookback upper 0.082427,
0.082413 against 0.082412, 0.082399; straddle lower 0.057800, 0.057799 against 0.057797,
0.057790). Offline from the captured 10 s states (2 s of steps) the N = 5 sides gained up to
0.06% (Asian lower, straddle upper) where the pipeline's own starts show none."""

REACH = 0.2
"""``polyak``'s ``reach`` for the second polish that ``beside.inner_beside_polish`` runs in the
child process after its path passes (the parent's polish keeps 0; both dilated; the better
certificate is kept): targets below the floor, down to 0.2 x |the bound| below the start (the
first halfway there), so the steps are longer (Polyak's step with an underestimate of the
optimum). Chosen on the captured 13-date Asian lower side (44 s; dilated: reach 0 / 0.05 /
0.2 / 1: 0.040149 / 0.040151 / 0.040198 / 0.039929; the upper side 0.053452 / - / 0.053404 /
-, reach 0.5 0.053465) against the child's earlier plain steps with reach 1 (0.040180,
0.053403), then checked on the other ten captured sides (the polish's own time, plain reach 1
-> dilated reach 0.2): Heston N = 5 lower Asian 0.028312 -> 0.028304, lookback 0.050897 ->
0.050943, straddle 0.057824 -> 0.057918, upper Asian 0.037134 -> 0.037149, lookback 0.082348
-> 0.082320, straddle 0.107933 -> 0.107777; 13 dates lookback 0.079023 -> 0.079059 / 0.145117
-> 0.145033, straddle 0.112577 -> 0.112731 / 0.171004 -> 0.170777. Where the child's
certificate is the better of the two (the 13-date Asian's lower side, both lookbacks' upper
sides) it is now better still; elsewhere the parent's (reach 0) stays ahead either way."""

DILATION = 2.0
"""Shor's space-dilation coefficient alpha of the polish's steps (``polish``, ``polish_side``;
``polyak``'s ``dilation``): before each step the metric H (from the identity) is contracted by
1 / alpha along the difference of the last two subgradients, and the step is Polyak's in that
metric, u <- u - (F(u) - L) H g / g'H g (the r-algorithm's step with Polyak's length, the metric
kept as H = B B' by rank-one updates). The exact dual is badly scaled (masses from 1e-13 to
1e-1) and its subgradients alternate between a few faces; the dilation damps the directions in
which they alternate. Measured on the captured polish inputs of the pipeline (``workers=2``,
the Markov chain's value as the floor, the polish's own time, two processes side by side, one
BLAS thread each), plain -> alpha 2, in the payoff's sign: Heston N = 5, M = 150 (3.3-4.7 s),
lower Asian 0.028394 -> 0.028402, lookback 0.050937 -> 0.050947 (alpha 1.5), straddle 0.057925
-> 0.057952, upper Asian 0.037163 -> 0.037134, lookback 0.082371 -> 0.082348, straddle
0.107764 -> 0.107706; 13 monthly dates, Asian (44 s), lower 0.039927 -> 0.040139, upper
0.053545 -> 0.053452 (the second polish's targets below the floor, ``REACH``, give 0.040180 and
0.053403 there without dilation, and 0.039929 with alpha 2); held out (lookback and straddle at
13 dates, 20 s), lower 0.079102 -> 0.079110 and 0.112520 -> 0.112846, upper 0.145534 ->
0.145225 and 0.170812 -> 0.170741. Alpha 1.3 and 1.5 were between plain and 2 on most sides;
alpha 3 did not move the 13-date lower side at all (the metric degenerates)."""

DILATION_MAX_SIZE = 6_000
"""Most potentials (the problem's size n) for which the polish keeps the dilated metric, an
n x n array (6,000: 288 MB); a larger problem takes plain steps."""

CHECK_EVERY = 20
"""Steps between two certificates (one costs three to five exact sweeps; the last point is
certified whatever the count). Was 10; measured from the captured 10 s / 60 s states (one
process, load 2, two rounds each, 10 / 20 / 40): 13 monthly dates, the Asian's lower side in
25 s 0.039600, 0.039598 / 0.039742, 0.039722 / 0.039741, 0.039741 (193 / 264 / 282 steps);
Heston N = 5, 2 s per side: the Asian's lower side 0.028304, 0.028334 / 0.028327, 0.028341 /
0.028333, 0.028337, the other five sides within 0.015% of each other either way (noise)."""

LOWERED_START = 10.0
"""``polish`` starts from the potentials lowered to their lines (``_Sweeper.lower_to_lines``)
when F(u) lies further above the certificate than this many times the certificate above the
floor. Measured: the forward-start straddle at M = 76 (F(u) = 1.65, certificate 0.1089, floor
0.1075) gained nothing in 2,000 steps from u, 1% in 2 s from the lowered point; at M = 150
(10 s certificates, 2 s of steps each way, one process): from u / lowered, straddle lower
0.057902 / 0.057881, Asian lower 0.028315 / 0.028332, straddle upper 0.107850 / 0.107857,
lookback upper 0.082392 / 0.082393 (F(u) 0.3-30 times the certificate's distance to the floor
above it): a wash, so only a point far above starts lowered."""

SIDE_MAX_STEPS = 100_000
"""Most steps of a side's polish (``polish_side``, the quote bounds' ``_polish_side``): the
steps have no stop of their own but the budget, so a budget the clock never reaches (1e308,
with an rtol the stages cannot meet) kept the side running forever. Measured 0.4-1.2 ms a step
on 13-50 points (1e5 steps: 40-120 s there); the 150-point benchmarks' polishes (about 2 s a
side) take far fewer, so no measured bound changes."""


def check_run(max_seconds, max_steps, floor) -> None:
    """A ``ValueError`` naming the argument unless ``max_seconds`` is a real number, not NaN
    (<= 0: no step, as a caller's budget already spent; inf only with ``max_steps``: the steps
    alone would never stop), ``max_steps`` None or an integer >= 0 (not a bool) and ``floor``
    a real number (NaN or inf: no step)."""
    if not _real(max_seconds) or np.isnan(max_seconds):
        raise ValueError(f"max_seconds must be a real number (<= 0: no step), got "
                         f"{max_seconds!r}")
    if max_steps is not None and (isinstance(max_steps, bool)
                                  or not isinstance(max_steps, numbers.Integral)
                                  or max_steps < 0):
        raise ValueError(f"max_steps must be None or an integer >= 0, got {max_steps!r}")
    if max_seconds == np.inf and max_steps is None:
        raise ValueError("max_seconds must be finite when max_steps is None (the steps alone "
                         f"never stop), got {max_seconds!r}")
    if not _real(floor):
        raise ValueError(f"floor must be a real number (NaN: no step), got {floor!r}")


def check_dilation(dilation) -> None:
    """A ``ValueError`` naming ``dilation`` unless it is a finite real number >= 1."""
    if not _real(dilation) or not (np.isfinite(dilation) and dilation >= 1):
        raise ValueError(f"dilation must be a finite number >= 1 (1: plain steps), got "
                         f"{dilation!r}")


class _Metric:
    """Shor's space dilation (``DILATION``) kept as the metric H = B B' of the step:
    ``direction(g)`` contracts H by 1 / alpha along the difference of ``g`` and the last
    subgradient, then returns H g. One symmetric matrix-vector product and one rank-one update
    a step (BLAS on the upper triangle)."""

    def __init__(self, n: int, alpha: float):
        self.n, self.shrink = n, 1.0 - 1.0 / alpha**2
        self.reset()

    def reset(self) -> None:
        self.H = np.asfortranarray(np.eye(self.n))
        self.g = self.p = None

    def direction(self, g: np.ndarray) -> np.ndarray:
        q = blas.dsymv(1.0, self.H, g)
        if self.p is not None:
            s = q - self.p  # H (g - the last g), H before this update
            gam = float((g - self.g) @ s)
            if np.isfinite(gam) and gam > 0:
                c = self.shrink / gam
                self.H = blas.dsyr(-c, s, a=self.H, overwrite_a=1)
                q = q - (c * float(s @ g)) * s
        self.g, self.p = g, q
        return q


def check_reach(reach) -> None:
    """A ``ValueError`` naming ``reach`` unless it is a finite real number >= 0."""
    if not _real(reach) or not (np.isfinite(reach) and reach >= 0):
        raise ValueError(f"reach must be a finite number >= 0, got {reach!r}")


def _check_vector(x, size: int, name: str) -> np.ndarray:
    """``x`` as a float vector of ``size`` finite entries, or a ``ValueError`` naming ``name``."""
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {size} finite numbers, got {x!r:.80}") from exc
    if v.shape != (size,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be {size} finite numbers, got "
                         f"{f'shape {v.shape}' if v.shape != (size,) else 'NaN or inf'}")
    return v


def _check_cert(cert, size: int, what: str) -> None:
    """A ``ValueError`` unless ``cert`` is a tuple (bound, point, ...) with a real bound and a
    point of ``size`` finite entries (``what`` names it)."""
    if not isinstance(cert, tuple) or len(cert) < 2 or not _real(cert[0]):
        raise ValueError(f"cert must be a tuple (bound, {what}, ...) with a real bound, got "
                         f"{cert!r:.80}")
    _check_vector(cert[1], size, f"cert[1] ({what})")


def _check_sign(sign) -> float:
    if not _real(sign) or sign not in (1.0, -1.0):
        raise ValueError(f"sign must be 1.0 (upper side) or -1.0 (lower side), got {sign!r}")
    return float(sign)


def moves_laws(sw, out: list) -> np.ndarray:
    """Laws of X_1..X_T (flat over the supports, ``sw.mu_flat``'s layout) of the chain that
    moves every live state of period t as the exact sweep's envelopes ``out`` say (to y_j1 with
    weight lam, to y_j2 with 1 - lam), started from the law of (S_0, X_0). The joint laws pass
    through the periods' work arrays (``sweep._Period.scratch``)."""
    mass = sw.mass0
    laws = []
    for t, per in enumerate(sw.periods):
        _, _, j1, j2, lam = out[t]
        mass = per.scatter(per.moves(mass, j1, j2, lam, scratch=True), scratch=True)
        laws.append(mass.sum(axis=0))
    return np.concatenate(laws)


def polyak(step, certify, cert: tuple, floor: float, *, max_seconds: float,
           max_steps: int | None = None, project=None, reach: float = 0.0,
           dilation: float = 1.0) -> tuple[tuple, dict]:
    """(the best certificate found, its report) from Polyak subgradient steps (module
    docstring) on a convex function, started at the certificate ``cert`` = (bound, point, ...):
    ``step(x)`` -> (value at x, a subgradient), ``certify(x)`` -> a certificate tuple of x
    (bound first, x second), ``project`` (optional) maps a point back into the feasible set.
    Within ``max_seconds`` (checked before every step, with room for the last certificate) and
    ``max_steps`` (None: no limit). ``floor``: a value the function cannot go below (e.g. an
    inner value); a non-finite floor or one above ``cert``'s bound leaves ``cert`` as it is.
    ``reach``: the targets may lie down to ``reach`` x |the start's bound| below the start
    where that is below the floor (the first one ``LEVEL`` of the way there); the floor still
    ends the run. ``dilation``: Shor's coefficient alpha of the steps' metric (``DILATION``;
    1: plain steps, as for a problem of more than ``DILATION_MAX_SIZE`` entries). With a
    ``project``ion the dilated step is projected in the Euclidean metric (not a projected step
    in the dilated one, but every point is feasible and certified all the same).
    The report: the start's and the end's bound, steps, certificates, seconds, the dilation
    used. ``max_seconds``
    <= 0 (a budget already spent) takes no step; NaN, or inf with no ``max_steps``, is a
    ``ValueError`` (``check_run``)."""
    check_run(max_seconds, max_steps, floor)
    check_reach(reach)
    check_dilation(dilation)
    t0 = time.perf_counter()
    best = cert
    size = np.size(cert[1])
    if size > DILATION_MAX_SIZE:
        dilation = 1.0
    report = dict(start=float(cert[0]), value=float(cert[0]), steps=0, certificates=0,
                  seconds=0.0, dilation=float(dilation))
    if not (np.isfinite(floor) and floor < cert[0]) or max_seconds <= 0:
        return best, report
    x = np.array(cert[1], dtype=float)
    f_best = np.inf
    # the targets' lowest level: the floor, or reach x |bound| below the start if further
    low = min(floor, cert[0] - reach * abs(cert[0]))
    delta = LEVEL * (cert[0] - low)  # the target's distance below the best value
    missed = 0
    step_seconds = 0.0
    metric = _Metric(size, dilation) if dilation > 1 else None

    def check(x):
        nonlocal best
        c = certify(x)
        report["certificates"] += 1
        if c[0] < best[0]:
            best = c

    for k in range(1, (10**9 if max_steps is None else int(max_steps)) + 1):
        # room for this step and the last certificate (about three sweeps)
        if time.perf_counter() - t0 + 4 * step_seconds > max_seconds:
            break
        t_step = time.perf_counter()
        value, g = step(x)
        d = g if metric is None else metric.direction(g)
        gg = float(g @ d)
        if metric is not None and not (np.isfinite(gg) and gg > 0):
            metric.reset()  # the metric lost its definiteness: start it again
            d = metric.direction(g)
            gg = float(g @ d)
        if not (np.isfinite(value) and gg > 0):
            break
        f_best = min(f_best, value)
        top = min(f_best, best[0])
        if top <= floor:  # at the floor: nothing left to aim at
            break
        level = max(top - delta, low)
        if value <= level + 0.5 * delta:  # near the target: aim further
            delta = min(WIDEN * delta, top - low)
            missed = 0
        else:
            missed += 1
            if missed >= STALL:  # the target lies too far below the optimum: come closer
                delta *= 0.5
                missed = 0
        x = x - (max(value - level, 0.0) / gg) * d
        if project is not None:
            x = project(x)
        report["steps"] = k
        step_seconds = time.perf_counter() - t_step
        if k % CHECK_EVERY == 0:
            check(x)
    if report["steps"] % CHECK_EVERY:
        check(x)
    report.update(value=float(best[0]), seconds=time.perf_counter() - t0)
    return best, report


def polish(sw, cert: tuple, floor: float, *, max_seconds: float, max_steps: int | None = None,
           reach: float = 0.0, dilation: float = DILATION) -> tuple[tuple, dict]:
    """``polyak`` on the potentials: F(u) swept exactly, the subgradient mu minus the laws of
    the superhedge's moves (module docstring), started at ``cert`` = (outer, u, violation per
    period) of ``sw.certify`` and certified by it; ``floor`` in the sweep's sign; ``reach`` and
    ``dilation`` as in ``polyak``."""
    check_run(max_seconds, max_steps, floor)
    check_reach(reach)
    check_dilation(dilation)
    _check_cert(cert, sw.mu_flat.size, "potentials")

    def step(u):
        value, out, _ = sw.hard(u, scratch=True)
        return value, sw.mu_flat - moves_laws(sw, out)

    if np.isfinite(floor) and floor < cert[0] and max_seconds > 0:
        # a point far above its own certificate (``LOWERED_START``) starts from its potentials
        # lowered to their lines, whose value is the certificate's
        t0 = time.perf_counter()
        if sw.hard(cert[1])[0] - cert[0] > LOWERED_START * (cert[0] - floor):
            cert = (cert[0], sw.lower_to_lines(cert[1])[1], *cert[2:])
        max_seconds = max_seconds - (time.perf_counter() - t0)
    return polyak(step, sw.certify, cert, floor, max_seconds=max_seconds, max_steps=max_steps,
                  reach=reach, dilation=dilation)


def position_step(prob, sign: float, a: np.ndarray) -> tuple[float, np.ndarray]:
    """(bound, a subgradient) of the bounds from quotes at option positions ``a``
    (``quote_problem._Problem``, the sign-flipped side ``sign``; rounding violations not added):
    the bound is the positions' cost at the quotes (asks for longs, bids for shorts) plus the
    cash of the exact sweep of their potentials u = sum_i a_i c_i, so a subgradient is c(a) - P
    with P the quotes' prices under the laws of the superhedge's moves and c_i the ask
    (a_i > 0), the bid (a_i < 0), or at a_i = 0 the price P_i clipped to the band (no gain
    inside it)."""
    sign = _check_sign(sign)
    a = _check_vector(a, int(prob.off[-1]), "a (the positions)")
    sw = prob.sweeper(sign)
    ask = np.where(np.isfinite(prob.ask), prob.ask, np.inf)
    u = prob.uvec(a)
    value, out, _ = sw.hard(u, scratch=True)
    laws = moves_laws(sw, out)
    price = prob.prices(sw.split(laws))
    cost = np.where(a > 0, ask, np.where(a < 0, prob.bid, np.clip(price, prob.bid, ask)))
    return prob.option_cost(a) + value - float(u @ sw.mu_flat), cost - price


def polish_positions(prob, sign: float, cert: tuple, floor: float, *, max_seconds: float,
                     max_steps: int | None = None, dilation: float = DILATION
                     ) -> tuple[tuple, dict]:
    """``polyak`` on the option positions of the bounds from quotes (``position_step``),
    started at ``cert`` = (bound, a, violation) of ``prob.certify`` and certified by it; a
    quote without an ask is never bought (positions projected to <= 0 after each step).
    ``dilation`` as in ``polyak`` (measured on the SPX quotes, M = 150, 10 s per side, the
    six sides of the benchmark: plain -> alpha 2, Asian [0.015832, 0.023494] -> [0.016327,
    0.023201], lookback [0.033797, 0.055429] -> [0.034013, 0.054857], forward-start straddle
    [0.043921, 0.078864] -> [0.044665, 0.077379]; docs/quote-bounds.md)."""
    sign = _check_sign(sign)
    check_run(max_seconds, max_steps, floor)
    check_dilation(dilation)
    _check_cert(cert, int(prob.off[-1]), "positions")
    has_ask = np.isfinite(prob.ask)

    def certify(a):
        total, _, viol = prob.certify(a, sign)
        return total, a, viol

    return polyak(lambda a: position_step(prob, sign, a), certify, cert, floor,
                  max_seconds=max_seconds, max_steps=max_steps,
                  project=lambda a: np.where(has_ask, a, np.minimum(a, 0.0)), dilation=dilation)


def polish_side(side, chain, marginals, sense: str, *, max_seconds: float, rtol: float,
                inner_resid_tol: float = INNER_RESID_TOL, reach: float = 0.0,
                dilation: float = DILATION):
    """``side`` (a certified ``BoundSide`` of ``chain`` with its potentials in
    ``info["u_sweep"]``) with its outer bound polished (``polish``, the side's inner value as the
    floor) within ``max_seconds`` and ``SIDE_MAX_STEPS``: the better certificate, its hedge,
    gap and status; ``info["polish"]`` reports the attempt either way (start and end in the
    payoff's sign). The status becomes ``"certified"`` only when the gap is within ``rtol``
    and the inner value's chain fits the marginals (``side.primal_residual <= inner_resid_tol``, as
    ``certify_side`` asks): an inner value of other marginals (a coarse level's, a smoothed
    chain's) may lie beyond the optimum, and the polished bound would then close on it.
    ``reach`` and ``dilation`` as in ``polyak`` (the second process's polish: ``REACH``)."""
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.augment import AugmentedChain
    from deepquant.mmot.certified import adopt_certificate
    from deepquant.mmot.result import BoundSide
    from deepquant.mmot.sweep import _Sweeper

    for name, v, kind in (("side", side, BoundSide), ("chain", chain, AugmentedChain),
                          ("marginals", marginals, Marginals)):
        if not isinstance(v, kind):
            raise ValueError(f"{name} must be of type {kind.__name__}, got {type(v).__name__}")
    if sense not in ("lower", "upper"):
        raise ValueError(f"sense must be 'lower' or 'upper', got {sense!r}")
    if not _real(rtol) or not (np.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a finite number > 0, got {rtol!r}")
    if not _real(inner_resid_tol) or not (np.isfinite(inner_resid_tol) and inner_resid_tol >= 0):
        raise ValueError(f"inner_resid_tol must be a finite number >= 0, got "
                         f"{inner_resid_tol!r}")
    check_run(max_seconds, None, 0.0)
    check_reach(reach)
    check_dilation(dilation)
    u = side.info.get("u_sweep")
    if u is None or max_seconds <= 0:
        return side
    sign = 1.0 if sense == "upper" else -1.0
    sw = _Sweeper(chain, marginals, sign)
    start = (sign * side.value, sw.flatten(u), None)
    if not np.all(np.isfinite(start[1])):  # no potentials to step from: the side stands
        return side
    best, report = polish(sw, start, sign * side.info["inner"], max_seconds=max_seconds,
                          max_steps=SIDE_MAX_STEPS, reach=reach, dilation=dilation)
    info = dict(side.info, polish=dict(report, start=sign * report["start"],
                                       value=sign * report["value"]))
    return adopt_certificate(side, sw, best, rtol=rtol, inner_resid_tol=inner_resid_tol,
                             info=info)
