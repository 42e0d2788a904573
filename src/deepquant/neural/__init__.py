"""Neural MMOT surrogate (DESIGN §3, seed 001 §9): a transformer that maps marginals to the
entropic MMOT dual potentials, its training data, training loop, the pricer and scenario
sweeps.

Needs the ``neural`` extra (torch, safetensors, tensorboard). Importing this package does not
import torch; the submodules ``model``, ``losses``, ``train``, ``pricer`` and ``evaluate`` do.

    from deepquant.neural.pricer import NeuralPricer
    pricer = NeuralPricer()                      # the shipped checkpoint
    sol = pricer.solve(marginals)                # pure neural: kernels, drift, price(payoff)
    sols = pricer.solve_batch([m1, m2, m3])      # one forward pass for many marginal sets

    from deepquant.neural.sweep import sweep     # one payoff on K scenarios, vs classical
    res = sweep(scenarios, payoff)               # res.neural, res.classical, res.summary()
"""

__all__ = ["NeuralPricer"]


def __getattr__(name):
    if name == "NeuralPricer":
        from deepquant.neural.pricer import NeuralPricer

        return NeuralPricer
    raise AttributeError(name)
