"""The one check of a seed argument (``rng``, ``seed``) for every engine.

An ``rng`` is an int >= 0, a ``numpy.random.Generator``, a ``numpy.random.SeedSequence`` or
``None`` (fresh entropy) (STYLE §4). numpy's own errors for anything else ("SeedSequence expects
int or sequence of ints for entropy not 1.5", "expected non-negative integer") do not name the
argument, and a bool would seed as 0 or 1.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["RngLike", "check_rng", "as_generator"]

RngLike = int | np.random.Generator | np.random.SeedSequence | None


def check_rng(rng: object, name: str = "rng") -> RngLike:
    """``rng`` unchanged when it is a valid seed; a ``ValueError`` naming ``name`` otherwise."""
    if rng is None or isinstance(rng, np.random.Generator | np.random.SeedSequence):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"{name} seed must be >= 0, got {rng}")
        return rng
    raise ValueError(f"{name} must be an int, a numpy Generator, a SeedSequence or None, "
                     f"got {rng!r}")


def as_generator(rng: object, name: str = "rng") -> np.random.Generator:
    """``numpy.random.default_rng`` of a checked ``rng`` (a Generator is returned as is)."""
    return np.random.default_rng(check_rng(rng, name))
