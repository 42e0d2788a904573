"""Neural MMOT surrogate (DESIGN §3, seed 001 §9): a transformer that maps marginals to the
entropic MMOT dual potentials, its training data, training loop, and the pure / hybrid pricer.

Needs the ``neural`` extra (torch, safetensors, tensorboard). Importing this package does not
import torch; the submodules ``model``, ``losses``, ``train``, ``pricer`` and ``evaluate`` do.

    from deepquant.neural.pricer import NeuralPricer
    pricer = NeuralPricer()                      # the shipped checkpoint
    sol = pricer.solve(marginals)                # pure neural: kernels, drift, price(payoff)
    sol = pricer.solve(marginals, hybrid=True)   # + Newton polish to the classical tolerance
"""

__all__ = ["NeuralPricer"]


def __getattr__(name):
    if name == "NeuralPricer":
        from deepquant.neural.pricer import NeuralPricer

        return NeuralPricer
    raise AttributeError(name)
