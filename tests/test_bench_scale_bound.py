"""The helpers of ``benchmarks/bench_scale_bound.py`` that the docs' numbers rest on: the
ratio per set of seeds, its seed bootstrap, and the oracles that give the psf mode the
simulator's truth (docs/nsg.md "Thirteenth attempt")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_nsg.core.stars import psf_photometry
from napari_nsg.synthetic import simulate_sequence

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale_bound.py"
MEDIAN_ABS_NORMAL = 0.6745


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale_bound", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(z_by_seed, bound=1e-3):
    """Rows as run_condition's: seed, frame, bound, error (the columns the helpers read)."""
    rows = []
    for seed, zs in z_by_seed.items():
        for k, z in enumerate(zs, start=1):
            rows.append((seed, k, bound, z * bound))
    return np.array(rows, float)


def test_ratio_per_set_takes_consecutive_runs_of_seeds(bench):
    """Seeds 0-1 have |z| = 0.6745 (ratio 1), seeds 2-3 |z| = 2 x that (ratio 2); a
    trailing seed that does not fill a set is left out."""
    z = {0: [0.6745, -0.6745], 1: [0.6745, 0.6745], 2: [1.349, -1.349], 3: [1.349, 1.349],
         4: [9.0, 9.0]}
    ratios = bench.ratio_per_set(_rows(z), size=2)
    assert np.allclose(ratios, [1.0, 2.0], atol=1e-3)


def test_seed_bootstrap_sd_is_zero_only_when_seeds_agree(bench):
    same = {s: [0.5, -1.0, 2.0] for s in range(6)}
    assert bench.seed_bootstrap_sd(_rows(same), draws=50) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(3)
    varied = {s: list(rng.standard_normal(4)) for s in range(12)}
    sd = bench.seed_bootstrap_sd(_rows(varied), draws=200)
    assert 0.05 < sd < 0.6  # a 48-frame median of unit normals: about 0.15 / 0.674
    assert np.isnan(bench.seed_bootstrap_sd(_rows({0: [1.0, 2.0]})))


def test_oracle_profiles_are_the_true_psf_and_are_undone(bench):
    """``--oracle profiles`` hands the psf mode each frame's true pixel-integrated Gaussian
    (variance sigma^2 + 1/12 px^2) and restores the module's functions afterwards."""
    seq = simulate_sequence(2, (64, 64), seed=0, psf="gaussian", fwhm=[3.0, 4.0],
                            star_density=1e-3, n_bright=0)
    saved = (psf_photometry.fit_profile_ring_sky, psf_photometry._reference_profile,
             psf_photometry.weighted_photometry)
    restore = bench._install_oracle(("profiles",), seq)
    try:
        bench.ORACLE_FRAME["target"] = 1
        target = psf_photometry.fit_profile_ring_sky(None, None, None, None, 4.0, None)
        ref = psf_photometry._reference_profile(None, 0, None, None, None, 3.0, None)
    finally:
        restore()
    for profile, fwhm in ((ref, 3.0), (target, 4.0)):
        sigma = fwhm / 2.3548200450309493
        assert profile.fwhm == pytest.approx(2.3548200450309493 * np.sqrt(sigma**2 + 1 / 12))
        assert profile.u == 0.0
    assert (psf_photometry.fit_profile_ring_sky, psf_photometry._reference_profile,
            psf_photometry.weighted_photometry) == saved
    assert bench._install_oracle((), seq)() is None
