"""deep-quant: exotic option pricing with quantified uncertainty.

Engines: ``deepquant.mmot`` (model-free bounds by martingale optimal transport),
``deepquant.neural`` (transformer surrogate of the MMOT solver; needs the ``neural`` extra) and
``deepquant.rough`` (rough Bergomi American/Bermudan pricer). Importing this package never
imports torch or ray.
"""

from deepquant.market.marginals import Marginals

__version__ = "0.1.0"

__all__ = ["Marginals", "__version__"]
