"""The pure-Python parts of benchmarks/peers.py (no Siril or GraXpert needed).

* the photutils-based normalization recovers a simulated frame's scale and brings its
  background to the reference's;
* the Siril log parsing reads linear_match's fit and the operations' times (a log of
  Siril 1.0.6 as captured on the development machine), and its affine keeps no-data;
* where siril-cli is installed (skipped otherwise), the coefficients recovered from Siril are
  exact on an exact linear relation;
* GraXpert is reported missing, not run, when no environment is given;
* the gradient table marks a failed tool as failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _peers import graxpert_peer, photutils_peer, report, siril
from _peers.common import Score

from napari_nsg.synthetic import simulate_sequence

SIRIL_LOG = """log: Running command: linear_match
log: Reading FITS: file ref.fit, 1 layer(s), 896x640 pixels
log: Linear fit functions:
log: y_0 = -4.233784e-03 + 1.105277e+00*x_0 (59999)
log: Running command: save
log: Sequence processing succeeded.
log: Execution time: 32.12 ms.
log: Execution time: 1.50 s.
log: Script execution finished successfully.
log: Total execution time: 53.09 ms.
"""


def test_photutils_normalization_recovers_scale_and_background():
    seq = simulate_sequence(2, (384, 384), seed=5, transmission=[1.0, 0.7], gradient=[0.0, 300.0],
                            sky=[800.0, 1500.0], star_density=5e-3, n_bright=30,
                            bright_flux_range=(1e3, 1.5e4))
    ref, tgt = seq.frame(0), seq.frame(1)
    out = photutils_peer.normalize(ref.data, tgt.data, fwhm=3.0)
    assert out.n_stars >= 10
    assert out.scale == pytest.approx(float(tgt.truth.scale[0]), rel=0.03)
    sigma = float(seq.truth[0].noise_sigma[0])
    before = np.median(tgt.data * out.scale - ref.data)
    after = np.median(out.corrected - ref.data)
    # the sky differs by hundreds of ADU before, by under a noise sigma after
    assert abs(before) > 50 * sigma
    assert abs(after) < sigma


def test_photutils_gradient_removal_flattens_a_tilt():
    _, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    image = 1000.0 + 0.25 * xx + np.random.default_rng(0).normal(0, 2, xx.shape).astype(np.float32)
    columns = photutils_peer.remove_gradient(image, 64).mean(axis=0)
    # a 128 ADU tilt; inside the outer 1.5 boxes the column means stay within 5 ADU (measured 1.4);
    # the 3x3 median filter flattens the map at the edges, where ~15 ADU of tilt stay (measured 31
    # peak-to-peak over the whole width)
    assert np.ptp(image.mean(axis=0)) > 120
    assert np.ptp(columns[96:-96]) < 5
    assert np.ptp(columns) > 10


def test_siril_log_parsing():
    assert siril.command_times(SIRIL_LOG) == pytest.approx([0.03212, 1.5])
    assert siril.total_time(SIRIL_LOG) == pytest.approx(0.05309)
    (b, a), = siril._FIT.findall(SIRIL_LOG)
    assert (float(a), float(b)) == pytest.approx((1.105277, -4.233784e-03))


def test_siril_affine_keeps_no_data_and_quantize_matches_16_bit():
    frame = np.array([[0.0, 10.0], [20.0, 70000.0]], dtype=np.float32)
    out = siril.Affine(2.0, 5.0).apply(frame)
    assert out.tolist() == [[0.0, 25.0], [45.0, 140005.0]]
    assert siril.quantize(np.array([-3.0, 1.4, 1.6, 7e4])).tolist() == [0.0, 1.0, 2.0, 65535.0]


def test_graxpert_missing_is_reported_not_run(tmp_path):
    python, why = graxpert_peer.check(None)
    assert python is None and "no --graxpert-python" in why
    python, why = graxpert_peer.check(str(tmp_path / "nope" / "python"))
    assert python is None and "nope" in why


def test_gradient_table_marks_failures():
    ours, peer = Score("ours"), Score("peer", error="RuntimeError: boom")
    ours.add(left=0.05, kept=1.0)
    ours.seconds.append(2.0)
    text = report.gradient_table({"compact": {"ours": ours, "peer": peer}}, "ours")
    assert "| ours | 0.05 / 1.00 | 2 | 1 |" in text
    assert "failed: RuntimeError: boom" in text


def test_truth_cache_leaves_the_scores_unchanged():
    from _peers.gradient import truth_evaluated_once

    from napari_nsg.synthetic import scoring, simulate_pair

    pair = simulate_pair((150, 200), seed=3, gain=25.0)
    tilted = pair.narrow + np.linspace(0, 30, 200, dtype=np.float32)[None, :]
    images = (pair.narrow, tilted, pair.narrow)
    original = scoring.pair_truth
    plain = [scoring.residual_fraction(pair, img) for img in images]
    plain.append(scoring.nebula_kept(pair, tilted))
    with truth_evaluated_once():
        # the same image scored again after another: the cached star mask was not altered
        cached = [scoring.residual_fraction(pair, img) for img in images]
        cached.append(scoring.nebula_kept(pair, tilted))
    assert scoring.pair_truth is original
    assert cached == pytest.approx(plain, rel=1e-6)
    # the tilt changes the score, so equal scores are not a constant
    assert plain[1] != pytest.approx(plain[0], rel=0.05)


@pytest.mark.skipif(siril.find() is None, reason="siril-cli not installed (apt-get install siril)")
def test_siril_coefficients_are_recovered_on_an_exact_linear_relation(tmp_path):
    """reference = 1.25 * target - 375 exactly: linear_match and addscale find it (the
    coefficients the benchmark recovers are Siril's); mulscale multiplies by the spread ratio
    times the location ratio (0.81 here) and adds almost nothing."""
    rng = np.random.default_rng(1)
    _, xx = np.mgrid[0:160, 0:240]
    # integers both ways (target in steps of 4 ADU): 16-bit files hold the relation exactly
    steps = np.rint(150 + 0.05 * xx + rng.normal(0, 3, xx.shape))
    target, reference = 4.0 * steps, 5.0 * steps - 375.0
    exe = siril.find()
    (lm,), _ = siril.linear_match(exe, (tmp_path / "lm").mkdir() or tmp_path / "lm",
                                  reference, [target])
    assert (lm.a, lm.b) == pytest.approx((1.25, -375.0), rel=2e-3)
    (add,), _ = siril.stack_normalization(exe, (tmp_path / "a").mkdir() or tmp_path / "a",
                                          reference, [target], "addscale")
    assert (add.a, add.b) == pytest.approx((1.25, -375.0), rel=2e-3)
    (mul,), _ = siril.stack_normalization(exe, (tmp_path / "m").mkdir() or tmp_path / "m",
                                          reference, [target], "mulscale")
    # measured a = 0.807, b = 2.7 ADU: the location ratio, not the relation
    assert abs(mul.b) < 0.01 * np.median(reference)
    assert mul.a == pytest.approx(1.25 * np.median(reference) / np.median(target), rel=0.02)
