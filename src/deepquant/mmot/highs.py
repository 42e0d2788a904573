"""HiGHS options of the exact LPs (``scipy.optimize.linprog(method="highs")``): the defaults and
the check of a user's options, shared by the chain LP (``deepquant.mmot.lp``), the path-space LP
and the quote bounds."""

from __future__ import annotations

import math
import numbers

import numpy as np

from deepquant.results import check_count

__all__ = ["COST_SCALE_MAX", "DEFAULT_HIGHS_OPTIONS", "HIGHS_OPTION_NAMES", "check_highs_options",
           "cost_scale"]

DEFAULT_HIGHS_OPTIONS = dict(presolve=False, primal_feasibility_tolerance=1e-9,
                             dual_feasibility_tolerance=1e-9)
"""HiGHS options used unless overridden: tight tolerances, presolve off (DESIGN §7: presolve gave
false infeasibility and 5e-8 residuals on MOT LPs with tiny tail masses; residuals are checked)."""

HIGHS_OPTION_NAMES = ("disp", "presolve", "time_limit", "maxiter", "dual_feasibility_tolerance",
                      "primal_feasibility_tolerance", "ipm_optimality_tolerance",
                      "simplex_dual_edge_weight_strategy", "mip_rel_gap", "mip_max_nodes")
"""The options ``scipy.optimize.linprog(method="highs")`` documents; it only warns on others."""


COST_SCALE_MAX = 1e6
"""Objective coefficients beyond this magnitude (or below its inverse) are scaled to 1 before
HiGHS sees them (``cost_scale``); in between the LP is passed as it is."""


def cost_scale(cost) -> float:
    """The factor an LP's objective is divided by before HiGHS sees it: its largest magnitude
    when that lies beyond ``COST_SCALE_MAX`` or below its inverse, else 1. HiGHS returns no
    solution for objective coefficients far from 1 (a forward-start strike of 1e20 on a grid
    near 1: "status code was not recognized"); the duals of the scaled LP times the factor are
    those of the LP."""
    scale = float(np.max(np.abs(cost), initial=0.0))
    return scale if scale > COST_SCALE_MAX or 0.0 < scale < 1.0 / COST_SCALE_MAX else 1.0


_POSITIVE = ("dual_feasibility_tolerance", "primal_feasibility_tolerance",
             "ipm_optimality_tolerance")
_COUNTS = ("maxiter", "mip_max_nodes")


def check_highs_options(user: dict | None) -> dict:
    """``DEFAULT_HIGHS_OPTIONS`` updated with ``user``, whose names are checked (a misspelt
    option would otherwise be dropped with a warning and the solve run on the defaults), and
    whose numbers too: ``time_limit`` >= 0 (inf: no limit, HiGHS's default), the tolerances
    finite and > 0, ``mip_rel_gap`` finite and >= 0, the counts integers >= 1. HiGHS ran with a
    NaN time limit or tolerance as if none was given, and warned "Invalid option value" and
    ignored a negative one."""
    if user is None:
        return dict(DEFAULT_HIGHS_OPTIONS)
    if not isinstance(user, dict):
        raise ValueError(f"highs_options must be a dict, got {type(user).__name__}")
    unknown = sorted(set(user) - set(HIGHS_OPTION_NAMES), key=str)
    if unknown:
        raise ValueError(f"highs_options has unknown option(s) {unknown}; HiGHS through "
                         f"scipy.optimize.linprog takes {list(HIGHS_OPTION_NAMES)}")
    for key, value in user.items():
        name = f"highs_options[{key!r}]"
        if key in _COUNTS:
            check_count(value, name)
            continue
        if key not in ("time_limit", "mip_rel_gap", *_POSITIVE):
            continue
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if key == "time_limit" and not (real and value >= 0):
            raise ValueError(f"{name} must be a number >= 0 (seconds; inf: no limit), "
                             f"got {value!r}")
        if key == "mip_rel_gap" and not (real and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if key in _POSITIVE and not (real and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return {**DEFAULT_HIGHS_OPTIONS, **user}
