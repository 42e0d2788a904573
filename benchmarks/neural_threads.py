"""Median milliseconds per ``NeuralPricer(threads=T).solve`` on one instance (11 GBM dates on
the network's 150-point grid, 15 solves after 3 warm-ups), and whether a thread warning came.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=<src> python benchmarks/neural_threads.py T [cli]

``cli``: first set the wait policy as the command line does (``prefer_passive_wait``), before
torch loads. docs/robustness.md, "Fifth pass", has the numbers.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import numpy as np

if len(sys.argv) > 2:   # the command line's choice, made before torch is imported
    from deepquant.neural.threads import prefer_passive_wait

    prefer_passive_wait()

from deepquant.market.synthetic import gbm_marginals  # noqa: E402
from deepquant.neural.pricer import NeuralPricer  # noqa: E402

threads = int(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pricer = NeuralPricer(threads=threads)
warned = any("OMP" in str(w.message) for w in caught)
m = gbm_marginals(np.linspace(0, 0.5, 11), grid=pricer.grid, sigma=0.2)
for _ in range(3):
    pricer.solve(m)
times = []
for _ in range(15):
    t0 = time.perf_counter()
    pricer.solve(m)
    times.append(time.perf_counter() - t0)
print(f"threads={threads} cli={len(sys.argv) > 2} median "
      f"{1e3 * statistics.median(times):.1f} ms  warned={warned}")
