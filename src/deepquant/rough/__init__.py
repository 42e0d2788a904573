"""Rough Bergomi American/Bermudan engine (DESIGN §4): hybrid-scheme paths, randomized QMC with
adaptive stopping, a Longstaff–Schwartz lower bound with signature features, a dual upper bound
from a signature martingale or from the Doob martingale of the regression value function with
one-period sub-simulation, Andersen–Broadie nested simulation, and parallel ensembles.

Quick start::

    from deepquant.rough import RoughBergomi, price_bermudan
    res = price_bermudan(RoughBergomi(), 100.0, rng=1)      # 12 dates, put, K = 100
    res.lower, res.upper, res.lower_ci, res.upper_ci
    conv = price_converged(RoughBergomi(), 100.0, steps=(8, 16), rng=1)   # two grids
    conv.value, conv.discretisation_error, conv.model
    price_bermudan(RoughBergomi(), AsianPut(strike=100.0), rng=1)   # any deepquant.payoffs
    # payoff truncated at each exercise date (deepquant.rough.exercise)

Only numpy/scipy are imported here; pysiglib (signatures) is imported when features are built.
"""

from deepquant.rough.dual import DualMartingale, MartingaleBasis, fit_dual, martingale_increments
from deepquant.rough.engine import BermudanPricer, BermudanResult
from deepquant.rough.ensemble import EnsembleResult, ensemble
from deepquant.rough.exercise import check_exercise_payoff, exercise_payoff
from deepquant.rough.extrapolate import (
    FEATURE_STEPS,
    TIME_STEP_RATE,
    ConvergedResult,
    Extrapolation,
    price_american,
    price_converged,
    richardson,
)
from deepquant.rough.heston import Heston
from deepquant.rough.lsm import ExerciseBasis, LSMPolicy, fit_lsm
from deepquant.rough.nested import AndersenBroadieResult, andersen_broadie
from deepquant.rough.presets import PRESETS, preset_pricer, price_bermudan
from deepquant.rough.qmc import AdaptiveResult, adaptive_mean, driver_increments, gaussian_points
from deepquant.rough.rbergomi import RoughBergomi, RoughPaths
from deepquant.rough.subsim import ValueFunction, fit_value_function, subsim_pathwise

__all__ = [
    "RoughBergomi",
    "RoughPaths",
    "Heston",
    "BermudanPricer",
    "BermudanResult",
    "EnsembleResult",
    "price_bermudan",
    "exercise_payoff",
    "check_exercise_payoff",
    "price_converged",
    "FEATURE_STEPS",
    "price_american",
    "richardson",
    "TIME_STEP_RATE",
    "ConvergedResult",
    "Extrapolation",
    "preset_pricer",
    "PRESETS",
    "ensemble",
    "ExerciseBasis",
    "LSMPolicy",
    "fit_lsm",
    "MartingaleBasis",
    "DualMartingale",
    "fit_dual",
    "martingale_increments",
    "andersen_broadie",
    "ValueFunction",
    "fit_value_function",
    "subsim_pathwise",
    "AndersenBroadieResult",
    "adaptive_mean",
    "AdaptiveResult",
    "driver_increments",
    "gaussian_points",
]
