"""The faster per-target paths of normalize (issue 13) give the plain paths' numbers, bit for bit.

- stamps copied by slices = gathered by index (edges included);
- the k-sigma clip with reused deviations = the one with ``np.mean`` / ``np.std`` per step;
- the stamps' border medians by row sort = ``np.nanmedian`` (NaN rows included);
- the no-data rule's value range by bands = two whole-frame reductions;
- the ring fit on the caller's mask = ``ring_statistics`` on NaN-marked values (and a
  plain least-squares plane with ``np.nanmedian`` to rounding).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_nsg.core import nodata
from napari_nsg.core.nsg import noise
from napari_nsg.core.stars import matching, photometry, psf_match


def test_window_by_slices_equals_the_gather_by_index():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(5, 80, 2))
        plane = rng.normal(size=(h, w)).astype(np.float32)
        n = int(rng.integers(0, 20))
        cx, cy = rng.integers(-5, w + 5, n), rng.integers(-5, h + 5, n)
        half = int(rng.integers(0, 12))
        offs = np.arange(-half, half + 1)
        values, inside = photometry.window(plane, cx, cy, offs, np.float64)
        want, want_inside = psf_match.window(plane, cx, cy, offs)
        assert values.dtype == np.float64
        assert np.array_equal(values, want.astype(np.float64))
        assert np.array_equal(inside, want_inside)


def _kclip_plain(values, k=noise.K_SIGMA, n_iter=50):
    v = values.astype(np.float64)
    sigma = float(np.std(v))
    for _ in range(n_iter):
        keep = np.abs(v - float(np.mean(v))) < k * sigma
        if keep.all() or keep.sum() < 10:
            break
        v = v[keep]
        new = float(np.std(v))
        if abs(new - sigma) <= 1e-4 * max(new, 1e-30):
            return new
        sigma = new
    return sigma


def test_kclip_equals_mean_and_std_per_step():
    rng = np.random.default_rng(2)
    clipped = 0
    for _ in range(100):
        x = (rng.standard_t(3, int(rng.integers(1, 50_000))) * 10 * rng.random()).astype(np.float32)
        got = noise._kclip_std(x)
        assert got == pytest.approx(_kclip_plain(x), rel=1e-7)  # float32 deviations, float64 sums
        clipped += got < float(np.std(x.astype(np.float64)))
    assert clipped > 50  # heavy tails: the clip did something


def test_border_medians_equal_nanmedian():
    rng = np.random.default_rng(3)
    for _ in range(100):
        stamps = rng.normal(100, 5, (int(rng.integers(1, 40)), 11, 11)).astype(np.float32)
        stamps[rng.random(stamps.shape) < rng.random()] = np.nan
        stamps[0] = np.nan  # a window with nothing in it
        med, mad = matching._border_stats(stamps)
        vals = stamps[:, np.pad(np.zeros((7, 7), bool), 2, constant_values=True)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(vals, axis=1)
            want_mad = np.nanmedian(np.abs(vals - want[:, None]), axis=1) * 1.4826
        assert np.array_equal(med, want, equal_nan=True)
        assert np.array_equal(mad, want_mad, equal_nan=True)


def _ring_plain(values, dx, dy):
    """The ring statistics as they were computed before (NaN-marked values, a plane
    fitted with the normal equations, MAD of the residuals by nanmedian)."""
    use = np.isfinite(values)
    a = np.stack([use, np.where(use, dx, 0.0), np.where(use, dy, 0.0)], axis=-1)
    ata = np.einsum("npi,npj->nij", a, np.stack([use, dx, dy], axis=-1) * use[..., None])
    atb = np.einsum("npi,np->ni", a, np.where(use, values, 0.0))
    count = use.sum(axis=-1)
    ok = count >= 6
    ata[~ok], atb[~ok] = np.eye(3), 0.0
    coef = np.linalg.solve(ata, atb[..., None])[..., 0]
    resid = np.where(use, values - (coef[:, :1] + dx * coef[:, 1:2] + dy * coef[:, 2:3]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(resid, axis=1)
        sig = 1.4826 * np.nanmedian(np.abs(resid - med[:, None]), axis=1)
    return np.where(ok, coef[:, 0], np.nan), sig, count


def test_ring_fit_on_the_mask_agrees_with_the_plain_fit():
    rng = np.random.default_rng(4)
    for _ in range(30):
        n, p = int(rng.integers(1, 60)), int(rng.integers(6, 400))
        values = rng.normal(1000, 30, (n, p)) + rng.normal(0, 3, (n, 1)) * rng.normal(0, 1, (n, p))
        values[rng.random(values.shape) < rng.random()] = np.nan
        dx, dy = rng.normal(0, 10, (n, p)), rng.normal(0, 10, (n, p))
        use = np.isfinite(values)
        level, sig, count = photometry.ring_fit(np.where(use, values, 0.0), use, dx, dy)
        want_level, want_sig, want_count = _ring_plain(values, dx, dy)
        assert np.array_equal(count, want_count)
        # the same sums in another order: equal to rounding
        np.testing.assert_allclose(level, want_level, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(sig, want_sig, rtol=1e-9, equal_nan=True)
        for a, b in zip((level, sig, count), photometry.ring_statistics(values, dx, dy)):
            assert np.array_equal(a, b, equal_nan=True)


def test_value_range_by_bands_equals_two_reductions():
    rng = np.random.default_rng(5)
    for _ in range(500):
        shape = tuple(int(v) for v in rng.integers(1, 90, int(rng.integers(1, 4))))
        data = rng.normal(size=shape).astype(rng.choice([np.float32, np.float64]))
        for _ in range(int(rng.integers(0, 4))):
            data[tuple(int(rng.integers(0, s)) for s in shape)] = rng.choice(
                [np.nan, np.inf, -np.inf, 0.0])
        data = np.abs(data) if rng.random() < 0.3 else data
        with np.errstate(invalid="ignore"):
            lo = float(np.min(data))
            want = (lo, float(np.max(data)) if np.isfinite(lo) else float("nan"))
        assert np.array_equal(nodata._range_and_zeros(data)[:2], want, equal_nan=True)
