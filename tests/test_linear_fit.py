"""LinearFit: PixInsight semantics (L1 line, rejection limits) and the gradient-proof robust mode."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core.linear_fit import (
    DEFAULT_FIT_METHOD,
    LinearFitError,
    _l1_line,
    linear_fit,
)


def large_scale_pair(gradient: float, seed: int = 1, shape=(300, 400)):
    """MMT-residual-like images: narrow = sky + nebula + gradient, wide = (narrow signal - a) / b."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(float)
    signal = 100.0 + sum(
        rng.uniform(10, 40) * np.exp(-((x - rng.uniform(0, w)) ** 2 + (y - rng.uniform(0, h)) ** 2)
                                     / (2 * rng.uniform(30, 120) ** 2))
        for _ in range(15))
    grad = gradient * (x / w + 0.5 * (y / h) ** 2)
    narrow = signal + grad
    wide = (signal - 20.0) / 1.43 + 0.2 * (y / h)  # true b = 1.43, a = 20
    return wide.astype(np.float32), narrow.astype(np.float32)


def test_l1_line_is_a_least_absolute_deviation_fit():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 2000)
    y = 3.0 + 2.0 * x + rng.laplace(0, 0.1, 2000)
    y[:200] += rng.uniform(5, 50, 200)  # 10 % gross outliers, one-sided
    a, b, _ = _l1_line(x, y)
    assert b == pytest.approx(2.0, abs=0.02)
    assert a == pytest.approx(3.0, abs=0.1)
    # least squares would be dragged far off by the outliers
    b_ls = np.polyfit(x, y, 1)[0]
    assert abs(b_ls - 2.0) > 3 * abs(b - 2.0)
    # L1 optimality: the slope is a root of sum x sign(residual)
    r = y - a - b * x
    assert abs(np.sum(x * np.sign(r))) < 0.02 * np.sum(np.abs(x))


@pytest.mark.parametrize("method", ["pixinsight", "robust"])
def test_clean_data_gives_the_exact_line(method):
    wide, narrow = large_scale_pair(gradient=0.0)
    narrow = narrow + 0.2 * 1.43 * (np.mgrid[0:300, 0:400][0] / 300)  # exactly 20 + 1.43 wide
    fit = linear_fit(wide, narrow, method=method, reject_high=1.0, range_target=1e9,
                     range_reference=1e9)
    assert fit.b == pytest.approx(1.43, rel=1e-3)
    assert fit.a == pytest.approx(20.0, abs=0.3)
    assert fit.method == method
    np.testing.assert_allclose(fit.apply(wide), narrow, atol=0.5)


def test_pixinsight_rejection_limits_are_fractions_of_the_data_range():
    rng = np.random.default_rng(1)
    wide = rng.uniform(0, 1000, (200, 200)).astype(np.float32)
    narrow = (5 + 2 * wide).astype(np.float32)
    wide[:10] = 0  # no data: always rejected
    fit = linear_fit(wide, narrow, method="pixinsight", reject_low=0.1, reject_high=0.5)
    lo_x, hi_x = fit.limits_target
    assert lo_x == pytest.approx(0.1 * wide.max()) and hi_x == pytest.approx(0.5 * wide.max())
    lo_y, hi_y = fit.limits_reference
    assert hi_y == pytest.approx(0.5 * narrow.max())
    # kept: low < value < high in both images
    finite = (wide != 0)
    expect = finite & (wide > lo_x) & (wide < hi_x) & (narrow > lo_y) & (narrow < hi_y)
    assert fit.fraction_used == pytest.approx(expect.sum() / finite.sum(), abs=0.01)
    assert fit.b == pytest.approx(2.0, rel=1e-4)
    # the range can be given (e.g. the maximum of the image before the MMT)
    fit2 = linear_fit(wide, narrow, method="pixinsight", reject_high=0.5, range_target=4000.0)
    assert fit2.limits_target[1] == pytest.approx(2000.0)


def test_too_few_samples_is_a_clear_error():
    flat = np.full((50, 50), 10.0, np.float32)
    with pytest.raises(LinearFitError, match="only 0 pixels pass the rejection limits"):
        linear_fit(flat, flat, method="pixinsight")  # 10 is not < 0.92 * 10
    with pytest.raises(ValueError, match="one shape"):
        linear_fit(flat, flat[:10])
    with pytest.raises(ValueError, match="unknown fit method"):
        linear_fit(flat, flat, method="ols")


def test_strong_gradient_collapses_the_pixinsight_slope_but_not_the_robust_one():
    """The numbers behind the default (docs/msgr.md, "LinearFit").

    The narrow large scales carry the gradient that MSGR is removing; it is
    uncorrelated with the wide image, and the L1 line dilutes the slope.
    Measured (true b = 1.43): gradient 0 -> PI 1.429, robust 1.430; gradient
    15 -> PI 1.58; gradient 60 -> PI 2.02, robust 1.430 (the sign and size of the
    bias depend on how the gradient lines up with the signal).
    """
    results = {}
    for gradient in (0.0, 15.0, 60.0):
        wide, narrow = large_scale_pair(gradient)
        pi = linear_fit(wide, narrow, method="pixinsight")
        rob = linear_fit(wide, narrow, method="robust")
        results[gradient] = (pi.b, rob.b)
        assert rob.b == pytest.approx(1.43, rel=0.005)
    assert abs(results[0.0][0] - 1.43) < 0.03
    assert abs(results[60.0][0] - 1.43) > 0.3
    assert DEFAULT_FIT_METHOD == "robust"


def test_robust_fit_flags_a_slope_it_cannot_tell_from_a_gradient():
    rng = np.random.default_rng(5)
    h, w = 200, 300
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    # only gradients and noise in common: no shared structure
    wide = (100 + 0.1 * x + rng.normal(0, 0.5, (h, w))).astype(np.float32)
    narrow = (50 + 0.3 * y + rng.normal(0, 0.5, (h, w))).astype(np.float32)
    fit = linear_fit(wide, narrow, method="robust", reject_high=1.0)
    assert abs(fit.slope_identifiable) < 0.1
    wide2, narrow2 = large_scale_pair(30.0)
    assert linear_fit(wide2, narrow2, method="robust").slope_identifiable > 0.99
