"""The rough engine's measured configurations (``preset_pricer``) and the one-call pricer
(``price_bermudan``), over ``deepquant.rough.engine.BermudanPricer``."""

from __future__ import annotations

from deepquant.payoffs import Payoff
from deepquant.rough.dual import MartingaleBasis
from deepquant.rough.engine import BermudanPricer
from deepquant.rough.lsm import ExerciseBasis
from deepquant.rough.qmc import RngLike
from deepquant.rough.rbergomi import RoughBergomi
from deepquant.rough.result import BermudanResult

__all__ = ["PRESETS", "preset_pricer", "price_bermudan"]


PRESETS = ("bs", "rbergomi", "rbergomi-signature", "heston")


def preset_pricer(name: str, **overrides) -> BermudanPricer:
    """The configurations measured in docs/benchmarks-rough.md (``overrides`` replace fields).

    ``"bs"``: the Black–Scholes limit (eta = 0): one log-Euler step per exercise period (exact),
    polynomial / Black–Scholes features only (no signature terms), least-squares dual refined
    pathwise. ``"rbergomi"``: the rough Bergomi configuration with the smallest measured duality
    gap (0.18-0.53% at K = 70..120, 0.46% mean over four seeds at K = 70): 8 steps per period,
    2^16 regression paths, LSM with martingale-adjusted targets and European values 1 and 3
    periods ahead as features, sub-simulation Doob dual (256 inner paths on 512 outer paths per
    batch). ``"rbergomi-signature"``: the signature-martingale dual (pathwise refinement; gap
    1.9-2.7%, no inner simulation); ``"heston"``: the same settings for a ``Heston`` model
    (the sub-simulation dual is specific to rough Bergomi). The others use 2^15 regression paths; all up to 8 RQMC
    batches of 2^13 pricing paths.
    """
    common = dict(n_dates=12, n_regression=2**15, batch_size=2**13, min_batches=4,
                  max_batches=8)
    if name == "bs":
        opts = dict(common, steps_per_date=1, martingale_ridge=1e-6,
                    exercise_basis=ExerciseBasis(sig_level=0),
                    martingale_basis=MartingaleBasis(sig_level=0))
    elif name in ("rbergomi-signature", "heston"):
        opts = dict(common, steps_per_date=8, martingale_ridge=1e-2, dual_fit="pathwise",
                    dual_ridge=1e-3)
    elif name == "rbergomi":
        opts = dict(common, n_regression=2**16, steps_per_date=8, martingale_ridge=1e-2, dual_fit="pathwise",
                    dual_ridge=1e-3, dual="subsim", martingale_targets=True, subsim_inner=256,
                    subsim_outer=2**9, exercise_basis=ExerciseBasis(european_periods=(1, 3)),
                    # a lighter least-squares martingale: here it is only the control variate
                    # and the regression-target martingale (12 strikes cost ~1 s per 2^13 paths)
                    martingale_basis=MartingaleBasis(payoff_strikes=(0.7, 0.85, 1.0, 1.15)))
    else:
        raise ValueError(f"name must be one of {PRESETS}, got {name!r}")
    opts.update(overrides)
    return BermudanPricer(**opts)


def price_bermudan(model: RoughBergomi, payoff: Payoff | float, *, option: str = "put",
                   rng: RngLike = None, **options) -> BermudanResult:
    """Convenience: ``BermudanPricer(**options)(model, payoff, option=option, rng=rng)``."""
    return BermudanPricer(**options)(model, payoff, option=option, rng=rng)
