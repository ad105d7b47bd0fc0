"""The relative-gradient surface: a smoothed thin-plate spline, or a plane.

PixInsight's ``SurfaceSpline`` (which NSG uses) centres the node coordinates
on their centroid and scales them by ``1/r_max`` so all nodes lie in the unit
circle, then solves ``[[K + diag(lambda/w), P], [P^T, 0]] [c; a] = [z; 0]``
with the thin-plate kernel ``K_ij = r_ij^2 log r_ij`` and a first-degree
polynomial ``P = (1, u, v)``; ``lambda = 10**smoothness``. This module solves
the same system (it is also what SciPy's ``RBFInterpolator(kernel=
"thin_plate_spline", degree=1, smoothing=lambda/w)`` solves; the tests check
the two agree), so the smoothness parameter means what it means in NSG. At
smoothness 4 NSG fits a least-squares plane instead; so does this module. All
channels share the nodes and the weights, so one factorization serves them all,
and so do all the targets whose samples sit on the same bins
(:class:`SplineOperator`).

Evaluation is the costly part on large frames (nodes x points kernel values);
it is done in blocks of points, and on a coarse grid (see :mod:`.correction`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.distance import cdist

from ..blas import one_thread_product
from .params import MAX_SMOOTHNESS

EVAL_BLOCK = 2048  # points per block in evaluation


def tps_kernel(r2: np.ndarray) -> np.ndarray:
    """``r^2 log r`` from squared distances (0 at r = 0), in place where possible."""
    r2 = np.maximum(r2, 0.0, out=r2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * r2 * np.log(r2)
    out[r2 == 0] = 0.0
    return out


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances between the rows of ``a`` (m, 2) and ``b`` (n, 2)."""
    return cdist(a, b, "sqeuclidean")


@dataclass
class SurfaceModel:
    """A fitted surface ``z(x, y)`` per channel, in pixel coordinates.

    Attributes
    ----------
    kind : {"spline", "plane"}
    center : ndarray (2,)
        Node centroid (x, y) in px.
    radius : float
        Largest node distance from the centroid (px): coordinates are divided by it.
    plane : ndarray (3, c)
        Weighted least-squares plane ``a + b*u + c*v`` in normalized
        coordinates ``(u, v)`` (always fitted; the whole model when ``kind`` is
        "plane").
    smoothness : float
        log10 of the smoothing.
    n_nodes : int
    nodes : ndarray (n, 2) or None
        Normalized node coordinates of the spline.
    coef : ndarray (n, c) or None
        Kernel coefficients.
    poly : ndarray (3, c) or None
        Polynomial part of the spline.
    operator : SplineOperator or None
        The system it came from (to reuse the grid kernel matrix).
    """

    kind: str
    center: np.ndarray
    radius: float
    plane: np.ndarray
    smoothness: float
    n_nodes: int
    nodes: np.ndarray | None = None
    coef: np.ndarray | None = None
    poly: np.ndarray | None = None
    operator: "SplineOperator | None" = None

    @property
    def n_channels(self) -> int:
        return self.plane.shape[1]

    def slim(self) -> "SurfaceModel":
        """This surface without its solver (``operator``): nodes, coefficients and
        plane only, a few bytes per node, evaluated directly."""
        return replace(self, operator=None)

    def _norm(self, x, y) -> np.ndarray:
        x = np.ravel(np.asarray(x, float))
        y = np.ravel(np.asarray(y, float))
        return np.column_stack([(x - self.center[0]) / self.radius,
                                (y - self.center[1]) / self.radius])

    def evaluate_plane(self, x, y) -> np.ndarray:
        """The best-fit plane at pixel positions; ``(n, c)``."""
        uv = self._norm(x, y)
        return np.column_stack([np.ones(len(uv)), uv]) @ self.plane

    def __call__(self, x, y) -> np.ndarray:
        """The surface at pixel positions ``x, y`` (flattened); returns ``(n, c)``."""
        if self.kind == "plane" or self.coef is None:
            return self.evaluate_plane(x, y)
        uv = self._norm(x, y)
        out = np.column_stack([np.ones(len(uv)), uv]) @ self.poly
        for i in range(0, len(uv), EVAL_BLOCK):
            block = uv[i:i + EVAL_BLOCK]
            out[i:i + EVAL_BLOCK] += tps_kernel(_sqdist(block, self.nodes)) @ self.coef
        return out

    def on_grid(self, gx: np.ndarray, gy: np.ndarray, key=None) -> np.ndarray:
        """The surface at grid points (flattened), ``(n, c)``; with a prepared
        operator and a ``key`` the kernel matrix to the grid is reused."""
        if self.kind == "spline" and self.operator is not None and key is not None:
            mat = self.operator.grid_matrix(gx, gy, key)
            return one_thread_product(mat, np.vstack([self.coef, self.poly]))
        return self(gx, gy)


def _weighted_plane(u, v, z, w) -> np.ndarray:
    a = np.column_stack([np.ones_like(u), u, v]) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, z * np.sqrt(w)[:, None], rcond=None)
    return coef


class NodeKernel:
    """What every thin-plate system on one node set shares, whatever the smoothness
    and the weights: the normalized node coordinates, the kernel between the nodes
    and the kernel matrices from the nodes to evaluation grids.

    A smoothness change only adds another diagonal to the kernel, so a
    :class:`SplineOperator` built on a kept ``NodeKernel`` costs one solve.

    Parameters
    ----------
    x, y : ndarray (n,)
        Node positions in px.
    center, radius : optional
        The normalization (coordinates become ``(x - center) / radius``);
        by default the nodes' centroid and largest distance from it.
    """

    def __init__(self, x, y, *, center=None, radius: float | None = None):
        self.x = np.asarray(x, float)
        self.y = np.asarray(y, float)
        self.center = (np.array([self.x.mean(), self.y.mean()]) if center is None
                       else np.asarray(center, float))
        if radius is None:
            radius = float(np.max(np.hypot(self.x - self.center[0], self.y - self.center[1])))
        self.radius = radius if radius > 0 else 1.0
        self.u = (self.x - self.center[0]) / self.radius
        self.v = (self.y - self.center[1]) / self.radius
        self._kernel: np.ndarray | None = None
        self._grids: dict = {}

    @property
    def kernel(self) -> np.ndarray:
        """``r^2 log r`` between the nodes, ``(n, n)`` (computed once)."""
        if self._kernel is None:
            nodes = np.column_stack([self.u, self.v])
            self._kernel = tps_kernel(_sqdist(nodes, nodes))
        return self._kernel

    def grid_matrix(self, gx: np.ndarray, gy: np.ndarray, key, keep: bool = True) -> np.ndarray:
        """``[kernel, 1, u, v]`` from the grid points to the nodes (kept under ``key``)."""
        mat = self._grids.get(key)
        if mat is None:
            uv = np.column_stack([(np.ravel(gx) - self.center[0]) / self.radius,
                                  (np.ravel(gy) - self.center[1]) / self.radius])
            nodes = np.column_stack([self.u, self.v])
            mat = np.hstack([tps_kernel(_sqdist(uv, nodes)), np.ones((len(uv), 1)), uv])
            if keep:
                self._grids[key] = mat
        return mat


class SplineOperator:
    """The thin-plate system for one set of nodes (positions, weights, smoothness).

    The system depends only on where the samples are, not on their values. A
    target's samples fall on the reference's usable bins, minus those where the
    target has no data (its registration borders). :meth:`prepare` inverts the
    system of all the reference's bins once and keeps the kernel matrix to any
    evaluation grid it is asked for; :meth:`fit_subset` then solves a target's
    system from that inverse, so that fitting and evaluating a new target
    costs a few matrix-vector products and a solve the size of its dropped
    bins, instead of a factorization and a kernel evaluation.

    Parameters
    ----------
    x, y : ndarray (n,)
        Node positions in px.
    smoothness : float
        log10 of the smoothing; 4 or more: a plane.
    weights : ndarray (n,), optional
        Node weights (smoothing ``10**smoothness / weight``).
    kernel : NodeKernel, optional
        A kept kernel of these nodes (shared by the operators of other
        smoothness values); made here when omitted.
    """

    def __init__(self, x, y, *, smoothness: float = -2.0, weights=None,
                 kernel: NodeKernel | None = None):
        self._shared = kernel is not None
        self.nodes_kernel = kernel if kernel is not None else NodeKernel(x, y)
        k = self.nodes_kernel
        self.x, self.y = k.x, k.y
        n = len(self.x)
        if n < 3:
            raise ValueError(f"too few samples ({n}) to model the gradient (3 needed)")
        self.weights = np.ones(n) if weights is None else np.asarray(weights, float)
        self.smoothness = float(smoothness)
        self.center, self.radius, self.u, self.v = k.center, k.radius, k.u, k.v
        self.kind = "plane" if (self.smoothness >= MAX_SMOOTHNESS or n < 4) else "spline"
        self._inverse: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return len(self.x)

    def _system(self, index: np.ndarray | None = None) -> np.ndarray:
        """The bordered system of all nodes, or of the nodes ``index`` only."""
        kern = self.nodes_kernel.kernel
        idx = np.arange(self.n_nodes) if index is None else np.asarray(index, int)
        n = len(idx)
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = kern if index is None else kern[np.ix_(idx, idx)]
        system[np.arange(n), np.arange(n)] += 10.0**self.smoothness / self.weights[idx]
        p = np.column_stack([np.ones(n), self.u[idx], self.v[idx]])
        system[:n, n:] = p
        system[n:, :n] = p.T
        return system

    def prepare(self) -> "SplineOperator":
        """Invert the system once (for reuse over many targets)."""
        if self.kind == "spline" and self._inverse is None:
            self._inverse = np.linalg.inv(self._system())
        return self

    def fit(self, values) -> SurfaceModel:
        """The surface through ``values`` (n,) or (n, c) at the nodes."""
        z = np.asarray(values, float)
        if z.ndim == 1:
            z = z[:, None]
        plane = _weighted_plane(self.u, self.v, z, self.weights)
        model = SurfaceModel("plane", self.center, self.radius, plane, self.smoothness,
                             self.n_nodes)
        if self.kind == "plane":
            return model
        n = self.n_nodes
        if self._inverse is not None:
            sol = one_thread_product(self._inverse[:, :n], z)
        else:
            rhs = np.zeros((n + 3, z.shape[1]))
            rhs[:n] = z
            sol = np.linalg.solve(self._system(), rhs)
        model.kind = "spline"
        model.nodes = np.column_stack([self.u, self.v])
        model.coef, model.poly = sol[:n], sol[n:]
        model.operator = self
        return model

    def fit_subset(self, index: np.ndarray, values) -> SurfaceModel:
        """The surface through ``values`` at the nodes ``index`` only (a subset).

        With a prepared inverse of the whole system (:meth:`prepare`): for the
        kept rows ``k`` and dropped rows ``d`` of ``B = A^-1``, the reduced
        system's solution is ``B_kk r - B_kd B_dd^-1 B_dk r`` (a Schur
        complement), which costs the solve of a system the size of the dropped
        nodes only. Without one, the reduced system is solved directly (one
        symmetric solve: cheaper for a single target, as in a live preview);
        both give the same surface. Coordinates stay normalized as for the
        whole set (this scales the effective smoothing by ``(r_subset /
        r_all)^2``, a few percent when border bins are dropped).
        """
        z = np.asarray(values, float)
        if z.ndim == 1:
            z = z[:, None]
        index = np.asarray(index, int)
        n = self.n_nodes
        if self._inverse is None:
            rhs = np.zeros((len(index) + 3, z.shape[1]))
            rhs[:len(index)] = z
            sol = np.linalg.solve(self._system(index), rhs)  # (scipy's solve is slower here)
        else:
            keep = np.r_[index, n, n + 1, n + 2]
            drop = np.setdiff1d(np.arange(n), index)
            b = self._inverse
            r = np.zeros((n + 3, z.shape[1]))
            r[index] = z
            sol = one_thread_product(b, r)  # B_.k r (r is zero off the kept nodes)
            if len(drop):
                sol -= one_thread_product(b[:, drop],
                                          np.linalg.solve(b[np.ix_(drop, drop)], sol[drop]))
            sol = sol[keep]
        u, v, w = self.u[index], self.v[index], self.weights[index]
        plane = _weighted_plane(u, v, z, w)
        coef = np.zeros((n, z.shape[1]))
        coef[index] = sol[:len(index)]
        return SurfaceModel("spline", self.center, self.radius, plane, self.smoothness,
                            len(index), nodes=np.column_stack([self.u, self.v]), coef=coef,
                            poly=sol[len(index):], operator=self)

    def grid_matrix(self, gx: np.ndarray, gy: np.ndarray, key) -> np.ndarray:
        """``[kernel, 1, u, v]`` from the grid points to the nodes, kept under ``key``
        (by the shared :class:`NodeKernel`) once the operator is reused: prepared,
        or built on a kept kernel."""
        return self.nodes_kernel.grid_matrix(gx, gy, key,
                                             keep=self._inverse is not None or self._shared)


def fit_surface(
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    *,
    smoothness: float = -2.0,
    weights: np.ndarray | None = None,
) -> SurfaceModel:
    """Fit the relative-gradient surface to samples.

    Parameters
    ----------
    x, y : ndarray (n,)
        Sample positions in px.
    values : ndarray (n,) or (n, c)
        Sample values per channel.
    smoothness : float
        log10 of the smoothing, -4..4; 4 (or more) gives a plane.
    weights : ndarray (n,), optional
        Node weights (super-sample member counts): the smoothing at a node is
        ``10**smoothness / weight``.

    Returns
    -------
    SurfaceModel

    Raises
    ------
    ValueError
        Fewer than 3 samples.
    """
    return SplineOperator(x, y, smoothness=smoothness, weights=weights).fit(values)
