"""Bandwidth shares minimising a sum of per-step maxima (the epoch objective with the cuts fixed).

For fixed cuts, the epoch time of the delay model (:mod:`eclm.split.epoch_time`) depends on the
shares ``w`` only through

    f(w) = sum_j m_j * max_{k in A_j} (a_jk + d_jk / w_k)     over w >= 0, sum_k w_k = W

(``j`` runs over the forward and backward phases of the distinct steps, ``m_j`` counts how often a
step occurs, ``a`` is compute plus latency, ``d`` bytes). Every term is a maximum of convex
functions of ``w``, so ``f`` is convex, but not smooth and not separable: equalising finish times,
which is optimal for a single maximum, is not optimal for a sum of them.

:func:`optimal_shares` runs the central-cut ellipsoid method in the ``N - 1``-dimensional affine
hull of the simplex, for many instances at once. The ellipsoid always contains a minimiser, so a
subgradient ``g`` at the centre ``c`` bounds the optimum from below by ``f(c) - sqrt(g' P g)``; the
search stops when the best value is within ``tol`` (relative) of that bound, a certified optimum.
The ellipsoid shrinks by a fixed factor per step, so convergence is linear whatever ``f``'s kinks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["optimal_shares", "shares_objective"]


def shares_objective(a: np.ndarray, d: np.ndarray, weights: np.ndarray, active: np.ndarray,
                     shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f(w)`` and one subgradient for every instance.

    Args:
        a: ``(M, J, N)`` seconds that do not depend on bandwidth.
        d: ``(M, J, N)`` bytes.
        weights: ``(J,)`` multiplicity ``m_j`` of each row.
        active: ``(J, N)`` which devices take part in each row (every row has one).
        shares: ``(M, N)`` bytes/s, all > 0.

    Returns:
        ``(values (M,), subgradients (M, N))``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        comm = np.where(d > 0, d / shares[:, None, :], 0.0)
    times = np.where(active, a + comm, -np.inf)
    slowest = times.argmax(axis=2)  # (M, J): the straggler of each row
    values = (weights * np.take_along_axis(times, slowest[..., None], axis=2)[..., 0]).sum(axis=1)
    onehot = np.arange(a.shape[2]) == slowest[..., None]
    grad = -(weights[:, None] * onehot * d).sum(axis=1) / shares**2
    return values, grad


def _simplex_basis(n: int) -> np.ndarray:
    """``(n, n - 1)`` orthonormal basis of ``{x : sum x = 0}``."""
    q, _ = np.linalg.qr(np.eye(n) - 1.0 / n)
    return q[:, : n - 1]


def optimal_shares(a: np.ndarray, d: np.ndarray, weights: np.ndarray, active: np.ndarray, total: float,
                   *, tol: float = 1e-7, max_iter: int | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise ``f`` over the shares of ``total`` bytes/s, for ``M`` instances at once.

    Args:
        a: ``(M, J, N)`` seconds that do not depend on bandwidth.
        d: ``(M, J, N)`` bytes.
        weights: ``(J,)`` multiplicity of each row.
        active: ``(J, N)`` which devices take part in each row.
        total: ``W``, bytes/s to divide.
        tol: relative gap between the best value and the certified lower bound at which to stop.
        max_iter: cap on ellipsoid steps (default grows with ``N**2``).

    Returns:
        ``(values (M,), shares (M, N), lower_bounds (M,))``; ``values - lower_bounds <= tol *
        values`` unless ``max_iter`` ran out first.
    """
    m, _, n = a.shape
    if n == 1:
        shares = np.full((m, 1), float(total))
        values = shares_objective(a, d, weights, active, shares)[0]
        return values, shares, values
    dim, basis = n - 1, _simplex_basis(n)
    max_iter = max_iter or 200 + 120 * dim * dim
    centre = np.zeros((m, dim))
    shape = total * total * np.broadcast_to(np.eye(dim), (m, dim, dim)).copy()  # a ball around the simplex
    best, best_shares = np.full(m, np.inf), np.full((m, n), total / n)
    lower, todo = np.full(m, -np.inf), np.ones(m, dtype=bool)
    for _ in range(max_iter):
        shares = total / n + centre @ basis.T
        feasible = (shares > 0).all(axis=1)
        values, grad = shares_objective(a, d, weights, active, np.where(feasible[:, None], shares, 1.0))
        # Outside the simplex, cut away the side where the most negative share lies.
        outside = -(np.arange(n) == shares.argmin(axis=1)[:, None]).astype(float)
        grad = np.where(feasible[:, None], grad, outside) @ basis
        pg = np.einsum("mij,mj->mi", shape, grad)
        width = np.sqrt(np.maximum(np.einsum("mi,mi->m", grad, pg), 0.0))
        better = feasible & (values < best)
        best, best_shares = np.where(better, values, best), np.where(better[:, None], shares, best_shares)
        lower = np.where(feasible, np.maximum(lower, values - width), lower)
        todo &= (best - lower > tol * np.abs(best)) & (width > 0)
        if not todo.any():
            break
        centre[todo], shape[todo] = _ellipsoid_step(centre[todo], shape[todo], pg[todo], width[todo], dim)
    return best, best_shares, lower


def _ellipsoid_step(centre: np.ndarray, shape: np.ndarray, pg: np.ndarray, width: np.ndarray,
                    dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The smallest ellipsoid holding the half of ``{centre, shape}`` where ``grad . (x - c) <= 0``."""
    step = pg / width[:, None]
    if dim == 1:  # the ellipsoid is an interval: bisection
        return centre - 0.5 * step, shape / 4.0
    grow = dim * dim / (dim * dim - 1.0)
    shape = grow * (shape - 2.0 / (dim + 1) * np.einsum("mi,mj->mij", step, step))
    return centre - step / (dim + 1), 0.5 * (shape + np.swapaxes(shape, 1, 2))

