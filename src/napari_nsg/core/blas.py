"""Matrix products that OpenBLAS runs on the calling thread.

OpenBLAS shares a product among its threads once ``m*n*k`` exceeds
``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD`` (65536 * 4); its threads then
spin for tens of ms of CPU time after it, waiting for more work. The per-target
products of the NSG engine are a few ms each: split into row blocks under that
size, they cost the same time on one thread and no spinning.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLAS_ONE_THREAD", "one_thread_product"]

#: Largest ``m*n*k`` that OpenBLAS multiplies on the calling thread alone.
BLAS_ONE_THREAD = 65536 * 4


def one_thread_product(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None
                       ) -> np.ndarray:
    """``a @ b`` (2-D) by blocks of rows of ``a``, each product under
    ``BLAS_ONE_THREAD`` (the same sums; OpenBLAS's kernels for small and large
    products may round them differently)."""
    m, k = a.shape
    n = b.shape[1]
    rows = max(1, BLAS_ONE_THREAD // max(1, k * n))
    if out is None:
        if rows >= m:
            return a @ b
        out = np.empty((m, n), np.result_type(a, b))
    for r0 in range(0, m, rows):
        np.matmul(a[r0:r0 + rows], b, out=out[r0:r0 + rows])
    return out
