"""Reference selection: metrics against the simulator's truth and on real frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_nsg.cli import main
from napari_nsg.core.reference import (
    _padded,
    background_map,
    corner_gradients,
    gradient_complexity,
    holds_data_everywhere,
    sky_level,
    sky_levels,
)
from napari_nsg.core.nsg import NsgParameters
from napari_nsg.io import read_frame
from napari_nsg.pipeline.rank import (
    SCALE_PAIRS,
    FrameRank,
    blink_frame,
    choose_reference,
    measure_frame,
    rank_frames,
    recommend_reference,
    scale_window,
)
from napari_nsg.synthetic import simulate_sequence

# frame 4: best transmission and the least gradient; frame 6: clouded (T = 0.5)
TRANSMISSION = [0.85, 0.9, 0.8, 0.75, 1.0, 0.9, 0.5, 0.7]
SKY = [900, 1000, 950, 1100, 800, 1000, 900, 1050]
GRADIENT = [300, 220, 400, 250, 40, 350, 280, 320]
BEST, CLOUDED = 4, 6
# a field with enough measurable (unsaturated) stars for a precise photometric scale
FIELD = dict(star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    seq = simulate_sequence(
        len(TRANSMISSION), (400, 448), seed=7, reference=0, transmission=TRANSMISSION,
        sky=SKY, gradient=GRADIENT, **FIELD,
    )
    folder = tmp_path_factory.mktemp("rank_seq")
    paths = seq.write(folder)
    return seq, paths


@pytest.fixture(scope="module")
def ranking(sequence):
    seq, paths = sequence
    return rank_frames(paths)


def test_best_frame_first_clouded_last(sequence, ranking):
    _, paths = sequence
    order = [r.file for r in ranking.frames]
    assert order[0] == str(paths[BEST])
    assert order[-1] == str(paths[CLOUDED])
    assert ranking.reference == str(paths[BEST])
    assert all(r.ok for r in ranking.frames)
    assert [r.rank for r in ranking.frames] == list(range(1, len(paths) + 1))


def test_scales_use_the_apertures_whatever_the_photometry_asked(sequence, ranking):
    """``normalize --reference auto`` passes normalize's parameters (PSF weights by
    default): rank measures with the large apertures all the same, so its scales are the
    default ranking's to the bit."""
    _, paths = sequence
    asked_psf = rank_frames(paths, params=NsgParameters(photometry="psf"))
    for path in paths:
        assert asked_psf.row(path).scale == ranking.row(path).scale, path.name


def test_transmission_relative_to_best_matches_truth(sequence, ranking):
    seq, paths = sequence
    true_t = np.asarray(seq.transmission)[:, 0]
    for k, path in enumerate(paths):
        row = ranking.row(path)
        expected = true_t[k] / true_t[BEST]
        assert row.transmission[0] == pytest.approx(expected, rel=0.01), path.name
        assert row.scale[0] == pytest.approx(1 / expected, rel=0.01)
    assert ranking.row(paths[CLOUDED]).transmission[0] == pytest.approx(0.5, rel=0.01)


def test_weight_follows_snr_squared(sequence, ranking):
    """Weight relative to the best = (T_k/T_best)^2 * (sigma_best/sigma_k)^2 from the truth."""
    seq, paths = sequence
    t = np.asarray(seq.transmission)[:, 0]
    sigma = np.asarray(seq.noise_sigma)[:, 0]
    for k, path in enumerate(paths):
        expected = (t[k] / t[BEST]) ** 2 * (sigma[BEST] / sigma[k]) ** 2
        assert ranking.row(path).weight == pytest.approx(expected, rel=0.06), path.name


def test_gradient_estimates_match_true_diagonals(sequence, ranking):
    seq, paths = sequence
    for k, path in enumerate(paths):
        if GRADIENT[k] < 200:
            continue  # too small to measure to 5 % against the noise
        truth = corner_gradients(seq.background(k))
        row = ranking.row(path)
        for measured, true in ((row.gradient_1[0], truth.diagonal_1[0]),
                               (row.gradient_2[0], truth.diagonal_2[0])):
            true_size = float(np.hypot(truth.diagonal_1[0], truth.diagonal_2[0]))
            assert abs(measured - true) <= 0.05 * true_size, (path.name, measured, true)


def test_background_and_complexity(sequence, ranking):
    seq, paths = sequence
    for k, path in enumerate(paths):
        row = ranking.row(path)
        true_bkg = float(np.median(seq.background(k)))
        assert row.background[0] == pytest.approx(true_bkg, rel=0.01)
        assert row.noise[0] == pytest.approx(float(np.asarray(seq.noise_sigma)[k, 0]), rel=0.05)
    # the least-gradient frame is the least lumpy and has the smallest span
    spans = [ranking.row(p).background_span[0] for p in paths]
    lumpy = [ranking.row(p).complexity[0] for p in paths]
    assert int(np.argmin(spans)) == BEST and int(np.argmin(lumpy)) == BEST


def test_complexity_is_zero_for_a_plane_and_not_for_a_dome():
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float32)
    plane = 500 + 0.3 * xx - 0.2 * yy
    dome = plane + 80 * np.exp(-((xx - 50) ** 2 + (yy - 60) ** 2) / (2 * 70**2))
    c_plane = gradient_complexity(background_map(plane), plane.shape)
    c_dome = gradient_complexity(background_map(dome), dome.shape)
    assert c_plane.residual_rms[0] < 0.01
    assert c_dome.residual_rms[0] > 5
    assert c_plane.plane_ptp[0] == pytest.approx(0.3 * 399 + 0.2 * 299, rel=0.02)


def _disk_sums(image, xs, ys, radius=12):
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx**2 + yy**2 <= radius**2
    out = []
    for x, y in zip(xs, ys):
        ix, iy = int(round(x)), int(round(y))
        out.append(float(image[iy - radius : iy + radius + 1, ix - radius : ix + radius + 1][disk].sum()))
    return np.array(out)


def test_blink_normalization_puts_frames_on_one_background(sequence, ranking):
    seq, paths = sequence
    best_row = ranking.row(paths[BEST])
    ref = read_frame(paths[BEST]).data
    h, w = ref.shape
    st = seq.stars(BEST)
    inside = (st.x > 15) & (st.x < w - 16) & (st.y > 15) & (st.y < h - 16)
    # the 40 brightest stars whose peak stays far below saturation in every frame
    ok = inside & (st.peak[:, 0] + 2000 < 0.5 * seq.saturation)
    pick = np.argsort(-np.where(ok, st.flux[:, 0], -1))[:40]
    # star light of the reference: the frame minus its true background
    ref_light = _disk_sums(ref - seq.background(BEST), st.x[pick], st.y[pick])
    for k in (CLOUDED, 2):
        row = ranking.row(paths[k])
        blinked = blink_frame(read_frame(paths[k]).data, row, best_row)
        level = float(np.nanmedian(background_map(blinked).values))
        assert level == pytest.approx(best_row.background[0], abs=1.0)
        # the same star light as the reference, to the accuracy of the scale
        light = blinked - blink_frame(seq.background(k), row, best_row)
        ratio = np.median(_disk_sums(light, st.x[pick], st.y[pick]) / ref_light)
        assert ratio == pytest.approx(1.0, abs=0.015)


def test_rgb_sequence_ranks_per_channel(tmp_path):
    trans = [1.0, 0.6, 0.9]
    seq = simulate_sequence(3, (384, 384), seed=3, channels=3, transmission=trans, **FIELD)
    paths = seq.write(tmp_path)
    result = rank_frames(paths)
    assert result.reference == str(paths[0])
    row = result.row(paths[1])
    true = np.asarray(seq.transmission)[1] / np.asarray(seq.transmission)[0]
    np.testing.assert_allclose(row.transmission, true, rtol=0.015)
    assert len(row.gradient_1) == 3 and len(row.noise) == 3


def test_a_broken_frame_is_reported_and_the_rest_ranked(sequence, tmp_path, capsys):
    _, paths = sequence
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    small = tmp_path / "small.fits"
    from napari_nsg.io import write_frame

    write_frame(small, np.ones((50, 50), np.float32))
    out = tmp_path / "rank.json"
    code = main(["rank", *map(str, paths[:4]), str(broken), str(small), "--json", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    assert "broken.fits" in captured.err and "small.fits" in captured.err
    data = json.loads(out.read_text())
    rows = {r["file"]: r for r in data["frames"]}
    assert rows[str(small)]["error"].startswith("size or colour depth")
    assert rows[str(broken)]["rank"] is None and rows[str(broken)]["error"]
    assert [r["rank"] for r in data["frames"][:4]] == [1, 2, 3, 4]
    assert "recommended reference" in captured.out


def test_choose_reference_is_the_recommended_frame(sequence):
    _, paths = sequence
    # frame 4 is both the best-rated and the one with the least gradient
    assert choose_reference(paths[:5]) == paths[BEST]
    assert rank_frames(paths[:5]).reference == str(paths[BEST])


def test_noise_keywords_choose_the_yardstick(tmp_path):
    seq = simulate_sequence(4, (300, 300), seed=11, transmission=[0.8, 1.0, 0.9, 0.7],
                            noise_keywords=True, **FIELD)
    paths = seq.write(tmp_path)
    result = rank_frames(paths)
    assert "NOISExx" in result.yardstick_reason
    assert all(r.noise_source == "keywords" for r in result.frames)
    t = np.asarray(seq.transmission)[:, 0]
    sigma = np.asarray(seq.noise_sigma)[:, 0]
    assert result.frames[0].file == str(paths[int(np.argmax((t / sigma) ** 2))])


@pytest.mark.real
def test_wasp12b_twilight_frames_rank_last(real_data):
    paths = sorted((real_data / "wasp12b_calibrated").glob("*.fits"))
    result = rank_frames(paths)
    names = [p.file.rsplit("/", 1)[-1] for p in result.frames]
    assert all(r.ok for r in result.frames)
    # dawn twilight: the sky rises to 556 ADU (417) and 1046 ADU (420)
    assert names[-1] == "wasp12b_420.fits"
    dark = {"wasp12b_300.fits", "wasp12b_330.fits", "wasp12b_360.fits", "wasp12b_387.fits"}
    assert set(names[:4]) == dark
    assert names.index("wasp12b_417.fits") >= 5
    # the bright-sky dawn frames are never recommended as the reference
    assert Path(result.reference).name not in {"wasp12b_417.fits", "wasp12b_420.fits"}
    assert Path(result.reference).name in dark
    # the backgrounds of SOURCES.md
    assert result.row(paths[-1]).background[0] == pytest.approx(1046, rel=0.01)
    assert result.row(paths[0]).background[0] == pytest.approx(269, rel=0.01)


@pytest.mark.real
def test_seestar_strong_gradient_night_has_the_largest_gradient(real_data):
    paths = sorted((real_data / "seestar_m94").glob("*.fit"))
    result = rank_frames(paths, debayer="superpixel")
    strong = next(r for r in result.frames if "20250409" in r.file)
    others = [r for r in result.frames if r is not strong]
    assert strong.gradient_percent > max(r.gradient_percent for r in others)
    assert np.mean(strong.background_span) > 2 * max(np.mean(r.background_span) for r in others)
    # the frames are not registered to each other (other nights, 69 deg rotation):
    # those that cannot be paired with the yardstick say so instead of a wrong scale,
    # and so does the yardstick when no frame pairs with it (nothing is recommended)
    for r in result.frames:
        assert r.ok or "napari-nsg register" in r.error


def test_normalize_reference_auto_uses_the_recommended_frame(sequence, tmp_path):
    _, paths = sequence
    subset = [str(p) for p in paths[2:6]]  # frames 2..5; frame 4: best, least gradient
    out = tmp_path / "nsg"
    code = main(["normalize", *subset, "--reference", "auto", "--out", str(out), "-q"])
    assert code == 0
    report = json.loads((out / "nsg_results.json").read_text())
    assert report["reference"].endswith(paths[BEST].name)
    rows = {r["file"]: r for r in report["frames"]}
    assert rows[str(paths[BEST])]["is_reference"] is True


def _row(name, rank, rating, span, lumpy, transmission=1.0):
    return FrameRank(file=name, rank=rank, rating=rating, weight=rating, scale=[1.0 / transmission],
                     transmission=[transmission], background_span=[span], complexity=[lumpy])


def test_recommendation_weighs_gradient_size_and_complexity():
    rows = [_row("big.fits", 1, 1.0, 700, 150), _row("lumpy.fits", 2, 0.95, 300, 200),
            _row("small.fits", 3, 0.85, 310, 40), _row("smaller.fits", 4, 0.8, 300, 38),
            _row("noisy.fits", 5, 0.4, 100, 10), _row("cloudy.fits", 6, 0.9, 90, 10, 0.6)]
    pick, why = recommend_reference(rows)
    # the largest gradient (best rating) and the lumpiest are passed over; of the two
    # simple ones (within 10 % of each other) the better-rated; the low-rated and the
    # clouded frames are not candidates however flat their sky
    assert pick.file == "small.fits"
    assert "big.fits has" in why and "more gradient" in why
    # with equally small gradients the rating decides (NSG's choice)
    flat = [_row("a.fits", 1, 1.0, 100, 10), _row("b.fits", 2, 0.9, 95, 9.5)]
    assert recommend_reference(flat)[0].file == "a.fits"


def test_a_large_gradient_frame_is_not_recommended_even_with_the_best_weight(tmp_path):
    # frame 1: clearest sky and the best weight, but a strong gradient
    trans = [0.8, 1.0, 0.82, 0.78, 0.85]
    grad = [60, 900, 50, 70, 400]
    seq = simulate_sequence(len(trans), (320, 384), seed=5, transmission=trans, sky=900,
                            gradient=grad, **FIELD)
    paths = seq.write(tmp_path)
    result = rank_frames(paths)
    assert result.frames[0].file == str(paths[1])  # the top-ranked by weight ...
    assert result.reference != str(paths[1])  # ... is not the recommended reference
    chosen = int(Path(result.reference).stem.split("_")[-1])
    assert grad[chosen] <= 70
    assert "more gradient" in result.reference_reason


def test_sky_levels_of_many_rows_equal_sky_level_of_each():
    """The background map's clipping of all cells at once gives each cell's sky_level."""
    rng = np.random.default_rng(3)
    rows = []
    for n in (1, 2, 3, 40, 41, 500, 8649):
        v = rng.normal(1000.0, 20.0, n)
        v[: max(1, n // 20)] += rng.exponential(500.0, max(1, n // 20))  # stars
        rows.append(v)
    rows.append(np.round(rng.normal(300.0, 2.0, 999)))  # integer ADU: many ties
    rows.append(np.full(30, 7.0))  # MAD 0
    rows.append(np.array([np.nan, np.inf, 5.0, 6.0, 1e6]))
    rows.append(np.array([np.nan]))  # no value
    got = sky_levels(_padded(rows))
    want = np.array([sky_level(v) for v in rows])
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-12)
    assert np.isnan(got[-1]) and np.isnan(want[-1])


def test_metrics_skip_the_no_data_mask_only_when_every_pixel_holds_data():
    seq = simulate_sequence(1, (300, 400), seed=2, gradient=200, **FIELD)
    data = seq.frame(0).data.astype(np.float32)
    assert holds_data_everywhere(data)
    fast, masked = corner_gradients(data, clean=True), corner_gradients(data)
    np.testing.assert_array_equal(fast.diagonal_1, masked.diagonal_1)
    np.testing.assert_array_equal(fast.diagonal_2, masked.diagonal_2)
    holed = data.copy()
    holed[:40, :] = 0.0  # a zero border: no-data
    assert not holds_data_everywhere(holed)
    one_nan = data.copy()
    one_nan[150, 200] = np.nan
    assert not holds_data_everywhere(one_nan)
    row, _ = measure_frame(holed)
    assert row.background[0] == pytest.approx(measure_frame(data)[0].background[0], rel=0.01)


@pytest.fixture(scope="module")
def large_sequence(tmp_path_factory):
    """Frames over 2047 px: metrics on block means, stars and scales in the central half."""
    trans = [0.9, 1.0, 0.7, 0.85]
    seq = simulate_sequence(len(trans), (1400, 2100), seed=4, transmission=trans,
                            gradient=[150, 300, 100, 200], **FIELD)
    return seq, seq.write(tmp_path_factory.mktemp("rank_large"))


@pytest.mark.slow
def test_large_frames_scales_on_the_central_half_match_truth(large_sequence):
    seq, paths = large_sequence
    window = scale_window((1400, 2100))
    assert (window[0].stop - window[0].start, window[1].stop - window[1].start) == (700, 1050)
    result = rank_frames(paths)
    assert all(r.ok for r in result.frames)
    t = np.asarray(seq.transmission)[:, 0]
    best = int(np.argmax(t))
    assert result.frames[0].file == str(paths[best])
    for k, path in enumerate(paths):
        row = result.row(path)
        assert row.transmission[0] == pytest.approx(t[k] / t[best], rel=0.01), path.name
        assert max(row.n_star_pairs) <= 2 * SCALE_PAIRS  # the yardstick: its candidates
    # the whole-frame metrics as measured frame by frame, on their own
    for k in (0, 3):
        own, _ = measure_frame(read_frame(paths[k]).data)
        row = result.row(paths[k])
        assert row.background == own.background and row.n_stars == own.n_stars
        assert row.background_span == own.background_span


@pytest.mark.slow
def test_large_unregistered_frame_is_refused_in_the_central_half(large_sequence, tmp_path):
    _, paths = large_sequence
    from astropy.io import fits

    shifted = tmp_path / "shifted.fits"
    with fits.open(paths[2]) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    moved = np.zeros_like(data)
    moved[60:, 120:] = data[:-60, :-120]
    fits.PrimaryHDU(moved, header).writeto(shifted)
    result = rank_frames([*paths[:2], shifted, paths[3]])
    failed = {f.file: f.error for f in result.failed}
    assert list(failed) == [str(shifted)]
    assert "napari-nsg register" in failed[str(shifted)]
    assert result.reference in {str(p) for p in (paths[0], paths[1], paths[3])}



@pytest.mark.slow
def test_the_yardstick_model_reuses_pass_1_stars_and_is_unchanged(large_sequence):
    from napari_nsg.pipeline.rank import _yardstick_model, measure_loaded

    _, paths = large_sequence
    frame = read_frame(paths[1])
    measured = measure_loaded(str(paths[1]), frame)
    assert measured.stars is not None and len(measured.stars) > 0
    reused, window = _yardstick_model("y", frame, None, measured.stars)
    fresh, fresh_window = _yardstick_model("y", frame, None)
    assert window == fresh_window == scale_window(frame.data.shape)
    assert reused.stars is measured.stars  # not detected a second time
    for name in ("x", "y", "flux", "fwhm"):  # ... and the same detection
        np.testing.assert_array_equal(getattr(reused.stars, name), getattr(fresh.stars, name))
        np.testing.assert_array_equal(getattr(reused.candidates, name),
                                      getattr(fresh.candidates, name))
    assert reused.params == fresh.params
    holed = read_frame(paths[1])
    holed.data[:30, :] = 0.0  # a zero border: the crop's no-data rule could differ
    assert measure_loaded("holed", holed).stars is None


def test_cancel_during_the_scales_stops_reading(sequence):
    import threading

    from napari_nsg.pipeline.progress import Cancelled
    from napari_nsg.pipeline.rank import rank_loaded

    _, paths = sequence
    cancel, loads = threading.Event(), []

    def load(i):
        loads.append(i)
        return read_frame(paths[i])

    def progress(done, total, message):
        if message.startswith("scale of"):  # the first target's scale is in
            cancel.set()

    with pytest.raises(Cancelled):
        rank_loaded([str(p) for p in paths], load, progress=progress, cancel=cancel)
    n = len(paths)
    # pass 1 reads every frame; pass 2 the yardstick, the first target and at most the
    # two after it (one measured, one read ahead), not the other four
    assert n + 1 < len(loads) <= n + 1 + 3


# --- issue 13, third round: stars in tiles, the noise in pass 2, cheaper sky metrics ---


def test_stars_in_tiles_match_a_detection_over_the_whole_frame():
    from napari_nsg.core.reference import star_statistics, star_tiles

    seq = simulate_sequence(1, (1200, 1800), seed=11, fwhm=3.5, star_density=4e-3,
                            gradient=100)
    data = seq.frame(0).data.astype(np.float32)
    whole = star_statistics(data, threshold=5.0)
    tiles = star_tiles(data.shape, fraction=5, from_pixels=0)
    assert len(tiles) == 9 and star_tiles(data.shape) is None  # 2 Mpx: not tiled by default
    assert all(t[0].stop - t[0].start == 240 and t[1].stop - t[1].start == 360 for t in tiles)
    tiled = star_statistics(data, threshold=5.0, binning=2, clean=True, tiles=tiles)
    assert tiled.stars is None  # nothing a yardstick's model could reuse
    assert tiled.n_stars == pytest.approx(whole.n_stars, rel=0.1)
    assert tiled.median_fwhm == pytest.approx(whole.median_fwhm, rel=0.05)
    # a zero region: the count is scaled by the data pixels, not by all of them
    holed = data.copy()
    holed[:, :600] = 0.0
    half = star_statistics(holed, threshold=5.0, binning=2, tiles=tiles)
    assert half.n_stars == pytest.approx(tiled.n_stars * 2 / 3, rel=0.12)


def test_a_sparse_field_keeps_the_central_crop_instead_of_tiles():
    from napari_nsg.core.reference import MIN_TILED_STARS, star_statistics, star_tiles

    seq = simulate_sequence(1, (1200, 1800), seed=12, star_density=1e-4)
    data = seq.frame(0).data.astype(np.float32)
    tiles = star_tiles(data.shape, fraction=5, from_pixels=0)
    got = star_statistics(data, threshold=5.0, binning=2, clean=True, tiles=tiles)
    want = star_statistics(data, threshold=5.0, binning=2, clean=True)
    assert want.n_stars < MIN_TILED_STARS * 4
    assert got.n_stars == want.n_stars and got.median_fwhm == want.median_fwhm
    assert got.stars is not None


def test_no_data_test_with_negative_values_zeros_and_infinities():
    rng = np.random.default_rng(4)
    data = rng.normal(0.0, 5.0, (600, 300)).astype(np.float32)  # bias-subtracted: < 0 too
    data[data == 0] = 0.5
    assert holds_data_everywhere(data)
    for bad in (0.0, np.inf, -np.inf, np.nan):
        one = data.copy()
        one[520, 17] = bad
        assert not holds_data_everywhere(one), bad
    positive = np.abs(data) + 1
    positive[300, 3] = 0.0  # a band whose range does not straddle 0 until this pixel
    assert not holds_data_everywhere(positive)


def test_sky_levels_of_float32_rows_equal_those_of_the_same_values_in_float64():
    rng = np.random.default_rng(5)
    rows = [rng.normal(800.0, 15.0, n).astype(np.float32) for n in (7, 300, 4000)]
    rows[1][:10] += 3000  # stars
    packed = _padded(rows)
    assert packed.dtype == np.float32
    np.testing.assert_array_equal(sky_levels(packed), sky_levels(packed.astype(np.float64)))


def test_noise_measured_in_pass_2_is_each_frames_own_and_kept_in_the_cache(sequence, tmp_path):
    """Pass 2 measures the noise (beside the scales): the same values as measure_frame,
    also for a frame refused for its size; a ranking with the cache does not measure it
    again (pass 2 then reads each frame once)."""
    from napari_nsg.pipeline.rank import rank_loaded

    _, paths = sequence
    small = simulate_sequence(1, (300, 330), seed=9, **FIELD).write(tmp_path)[0]
    files = [*paths[:4], small]
    cache, loads = {}, []

    def load(i):
        loads.append(i)
        return read_frame(files[i])

    result = rank_loaded([str(p) for p in files], load, measured=cache)
    for path in files:
        own, noise = measure_frame(read_frame(path).data)
        row = result.row(path)
        assert row.noise == own.noise and row.noise_source == own.noise_source == "measured"
        assert cache[str(path)].measured_noise.sigma.tolist() == noise.sigma.tolist()
    assert result.row(small).error is not None and "size" in result.row(small).error
    loads.clear()
    again = rank_loaded([str(p) for p in files], load, measured=cache)
    assert sorted(loads) == [0, 1, 2, 3]  # the yardstick and the three others' scales
    assert [r.noise for r in again.frames] == [r.noise for r in result.frames]


@pytest.mark.slow
def test_tiled_stars_in_the_ranking(large_sequence, monkeypatch):
    """Frames large enough for tiles (made so by a lower size limit): the yardstick's
    model detects its own stars and the scales still match the truth."""
    from napari_nsg.core import reference

    seq, paths = large_sequence
    untiled = [measure_frame(read_frame(p).data)[0] for p in paths]
    monkeypatch.setattr(reference, "TILED_STARS_FROM", 1_000_000)
    result = rank_frames(paths)
    t = np.asarray(seq.transmission)[:, 0]
    best = int(np.argmax(t))
    for k, path in enumerate(paths):
        row = result.row(path)
        assert row.ok
        assert row.transmission[0] == pytest.approx(t[k] / t[best], rel=0.01), path.name
        assert row.n_stars == pytest.approx(untiled[k].n_stars, rel=0.15)
        assert row.fwhm == pytest.approx(untiled[k].fwhm, rel=0.08)


@pytest.mark.slow
def test_scales_on_the_whole_frame_when_the_central_half_has_no_star(large_sequence,
                                                                      tmp_path):
    """The yardstick's model falls back to the whole frame: the targets, cropped to the
    central half by the reader, are read again whole."""
    from astropy.io import fits

    seq, paths = large_sequence
    rng = np.random.default_rng(6)
    window = scale_window((1400, 2100))
    files = []
    for k, path in enumerate(paths):
        with fits.open(path) as hdul:
            data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
        sky = seq.background(k)[window]
        sigma = float(np.asarray(seq.noise_sigma)[k, 0])
        data[window] = sky + rng.normal(0.0, sigma, sky.shape)  # no star there
        files.append(tmp_path / path.name)
        fits.PrimaryHDU(data, header).writeto(files[-1])
    result = rank_frames(files)
    # the whole frame's candidates (the central half's would be capped at SCALE_PAIRS pairs)
    assert max(result.row(result.yardstick).n_star_pairs) > 2 * SCALE_PAIRS
    t = np.asarray(seq.transmission)[:, 0]
    best = int(np.argmax(t))
    for k, path in enumerate(files):
        row = result.row(path)
        assert row.ok, row.error
        assert row.transmission[0] == pytest.approx(t[k] / t[best], rel=0.01), path.name


def test_mesh_background_and_light_detection_against_the_truth_and_sep():
    from napari_nsg.core.rank_stars import detect_stars_lightly, mesh_background
    from napari_nsg.core.stars import detect_stars

    seq = simulate_sequence(1, (500, 760), seed=13, gradient=300, star_density=4e-3)
    data = seq.frame(0).data.astype(np.float32)
    back, rms = mesh_background(data)
    sigma = float(np.asarray(seq.noise_sigma)[0, 0])
    import sep

    # faint stars lift both noise estimates a little above the truth's
    assert rms == pytest.approx(sep.Background(data, bw=64, bh=64, fw=3, fh=3).globalrms,
                                rel=0.03)
    assert rms == pytest.approx(sigma, rel=0.08)
    inner = (slice(64, -64), slice(64, -64))  # the gradient: sep extrapolates at the edges too
    err = back[inner] - seq.background(0)[inner]
    assert abs(float(np.median(err))) < 0.15 * sigma and float(np.std(err)) < 0.25 * sigma
    light, full = detect_stars_lightly(data), detect_stars(data)
    assert len(light) == pytest.approx(len(full), rel=0.05)
    assert float(np.median(light.fwhm)) == pytest.approx(float(np.median(full.fwhm)), rel=0.03)
    holed = data.copy()
    holed[:50] = 0.0  # no-data, or too small for three meshes: sep's own detection
    for image in (holed, data[:150]):
        np.testing.assert_array_equal(detect_stars_lightly(image).x, detect_stars(image).x)


def test_a_scale_only_model_measures_the_same_scales(sequence):
    """The ranking's yardstick model skips the star mask, sample grids and noise, which
    measure_scale does not use: the same scales, pairs and warnings."""
    from napari_nsg.core.nsg.engine import measure_scale, prepare_reference

    _, paths = sequence
    ref = read_frame(paths[0])
    full = prepare_reference(ref.data, ref.meta)
    light = prepare_reference(ref.data, ref.meta, scale_only=True)
    assert light.grid is None and light.star_mask is None and light.noise is None
    for path in paths[1:4]:
        data = read_frame(path).data
        a, b = measure_scale(full, data), measure_scale(light, data)
        np.testing.assert_array_equal(a.scale, b.scale)
        assert list(a.n_star_pairs) == list(b.n_star_pairs) and a.warnings == b.warnings


def test_a_closed_pipe_ends_the_command_quietly(sequence):
    """``napari-nsg rank ... | head -1``: when the reader goes, the command ends quietly
    with 141 (128 + SIGPIPE), as shell tools do, not with an error."""
    import subprocess
    import sys

    _, paths = sequence
    proc = subprocess.Popen([sys.executable, "-m", "napari_nsg.cli", "rank",
                             *map(str, paths[:3])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the table is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "error" not in err and "Traceback" not in err
