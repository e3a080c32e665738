"""Black-box benchmark functions for zeroth-order optimisers, to be minimised.

Each function takes a point ``[d]`` or a batch ``[n, d]`` and returns a float or ``[n]``; its
value is the gold the optimiser never sees (a ranking oracle shows only the order). The minimum
of each is 0.
"""

from __future__ import annotations

import numpy as np


def quadratic(x) -> np.ndarray | float:
    """f(x) = 0.5 * sum_i c_i x_i^2 with c_i spread log-uniformly over [1, 10]: an
    ill-conditioned bowl (condition number 10) with its minimum 0 at the origin."""
    x = np.asarray(x, dtype=float)
    c = np.logspace(0.0, 1.0, x.shape[-1])
    out = 0.5 * (c * x**2).sum(-1)
    return float(out) if x.ndim == 1 else out


def rosenbrock(x) -> np.ndarray | float:
    """f(x) = sum_{i<d} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, the curved valley with its
    minimum 0 at x = (1, ..., 1); needs d >= 2."""
    x = np.asarray(x, dtype=float)
    if x.shape[-1] < 2:
        raise ValueError(f"rosenbrock needs dimension >= 2, got {x.shape[-1]}")
    out = (100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2).sum(-1)
    return float(out) if x.ndim == 1 else out


FUNCTIONS = {"quadratic": quadratic, "rosenbrock": rosenbrock}


def get_function(name: str):
    """The benchmark called ``name`` (see ``FUNCTIONS``)."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; expected one of {sorted(FUNCTIONS)}")
    return FUNCTIONS[name]
