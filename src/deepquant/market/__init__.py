"""Market layer: marginals, synthetic models, option chains and calibration."""

from deepquant.market.marginals import ConvexOrderReport, Marginals, RepairReport, call_matrix

__all__ = ["Marginals", "ConvexOrderReport", "RepairReport", "call_matrix"]
