"""How a certified side's time budget is split over its grid levels (DESIGN §2.8).

The multiscale start of ``deepquant.mmot.multiscale`` halves the grid down to a level whose
chain LP is small (solved exactly), then carries potentials up level by level; each level is
certified by one exact sweep and may run smoothed stages. Measured (Heston, N = 5, M = 150,
10 s per side, loaded 2-core machine): the smoothed stages gain most on the finest level whose
smoothed sweep is still cheap (lookback 76 points: 38 ms a sweep, 446,551 LP columns; Asian
39 points: 29 ms, 534,006 columns), less on the levels below it, and the finer levels are best
left with their certificate only (Asian at 150 points: 1 s a sweep). So:

* the **work level** is the finest level whose chain LP has at most ``WORK_COLUMNS_PER_SECOND``
  times the side's budget columns; it gets what its coarse levels leave of its budget;
* with the automatic levels, its coarse level is the LP level itself (the grid halved until
  the LP is small, the levels in between skipped), which gets all of its budget (HiGHS stops
  when the LP is solved, and the LP is small by construction); with a given number of levels
  its coarse levels get ``WORK_SHARE`` of that budget, each passing ``BELOW_SHARE`` on to the
  next, the LP level at the bottom again all of its parent's;
* the levels above the work level pass ``ABOVE_SHARE`` down and keep the rest for their exact
  certificate (and smoothed stages when ``FINE_SWEEPS`` of them still fit); the user's grid,
  when above the work level, first sets ``INNER_SHARE`` aside for its Markov inner value.
"""

from __future__ import annotations

WORK_COLUMNS_PER_SECOND = 60_000.0
"""Chain-LP columns per second of the side's budget below which a level is the work level
(10 s: 600,000 columns)."""

LEVEL_EPS_START = 1e-4
"""Smallest eps (relative to the payoff scale) a level's smoothed stages start from after the
level below (was 1e-5; measured at M = 150, 10 s per side: the Asian [0.0260, 0.0381] ->
[0.0272, 0.0377], the lookback's upper side 0.0834 -> 0.0830, the straddle unchanged)."""

WORK_SHARE = 0.4
"""Share of the work level's budget for its coarse levels."""

BELOW_SHARE = 0.5
"""Share a level below the work level passes to its coarse level (not the LP level's)."""

ABOVE_SHARE = 0.95
"""Share a level above the work level passes to its coarse level."""

INNER_SHARE = 0.3
"""Share of the side's budget kept for the inner value on the user's own grid (the Markov and
path-dependent chains of ``markov_inner``, ``path_inner``) when that grid lies above the work
level (no stage runs there, so its inner value would otherwise be a coarse level's, on other
marginals). Was 0.4 before the polish (``polish_share``) took its part: measured with the
polish, Heston, N = 5, M = 150, 10 s per side, one run each at load 2.1-2.4, the outer bounds
with (inner, polish) shares (0.4, 0), (0.3, 0.2), (0.2, 0.2), (0.25, 0.15), (0.3, 0.1): Asian
lower 0.028244, 0.028277, 0.028311, 0.028309, 0.028284; lookback upper 0.082662, 0.082486,
0.082491, 0.082455, 0.082576; straddle lower 0.057604, 0.057749, 0.057746, 0.057814, 0.057608
(the inner values moved with the load by more than with the shares)."""


POLISH_SHARE_PER_PERIOD = 0.04
"""Share of the side's budget kept per period (``polish_share``), on the user's own grid above
the work level, for polishing its certificate by subgradient steps on the exact dual
(``deepquant.mmot.polish``), after the inner value (whose value is the steps' floor): 0.2 at
five periods, as measured there (Heston, N = 5, M = 150, 10 s per side: 0.3 and 0.25 beside 0.2
moved the outer bounds by 0.01-0.05% and cut the lookback's upper path pass short). A step
sweeps every period, and the longer chains need more of them: 13 monthly dates (12 periods),
M = 150, Asian, 60 s per side, shares 0.2 / 0.3 / 0.4 / 0.5 of the polish (inner 0.3 or
0.2, the coarse levels the rest; rounds alternating, load 1.2-2.9): lower 0.039540, 0.039564
/ 0.039522, 0.039736 / 0.039741, 0.039812, 0.039769 / 0.039856, 0.039860, 0.039823, upper
0.053632, 0.053597 / 0.053588, 0.053576 / 0.053564, 0.053559, 0.053588 / 0.053557, 0.053557,
0.053565; the fine certificate the steps start from is the same in all (0.038026-0.038034
and 0.053969): the coarse levels end before their share there."""

POLISH_SHARE_MAX = 0.5
"""Largest share of the side's budget for the polish (``polish_share``), so that the coarse
levels keep at least 1 - ``INNER_SHARE`` - this of it. Measured beside 0.5 (13 monthly dates,
as above, load 2-3.7): 0.6 left the coarse levels too little, the fine certificate the steps
start from fell to 0.037790 (lower side) and the bounds ended at 0.039766, 0.039711 / 0.053614,
0.053551 against 0.039823 / 0.053565 with 0.5 in the same round."""


def polish_share(periods: int) -> float:
    """Share of a side's budget for the polish of a chain of ``periods`` periods:
    ``POLISH_SHARE_PER_PERIOD`` per period, at most ``POLISH_SHARE_MAX``."""
    return min(POLISH_SHARE_PER_PERIOD * periods, POLISH_SHARE_MAX)


def is_above(columns: int, work_columns: float, role: str) -> bool:
    """Whether a level of ``columns`` chain-LP columns lies above the work level: its smoothed
    stages then run only when ``FINE_SWEEPS`` predicted sweeps fit (the work level and those
    below it run them whatever the prediction, which the kernels' first load, timed in the
    exact sweep, made 10x too long)."""
    return role == "above" and columns > work_columns


def coarse_share(columns: int, work_columns: float, role: str, coarse_is_lp: bool
                 ) -> tuple[float, str]:
    """(share of this level's budget for its coarse level, the coarse level's role).

    ``columns``: this level's chain-LP columns; ``work_columns``: the work-level threshold;
    ``role``: ``"above"`` while no finer level was the work level, else ``"below"``;
    ``coarse_is_lp``: the coarse level is the LP level at the bottom."""
    if is_above(columns, work_columns, role):
        share = ABOVE_SHARE
        role = "above"
    else:
        share = WORK_SHARE if role == "above" else BELOW_SHARE
        role = "below"
    return (1.0 if coarse_is_lp else share), role
