"""Tests of the sky simulator: determinism, layouts, headers and, above all, its truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_nsg.io import airmass_from_altitude, read_frame
from napari_nsg.synthetic import (
    PSF,
    read_truth,
    render_stars,
    sample_pair,
    sample_sequence,
    simulate_pair,
    simulate_sequence,
    write_sequence,
)
from napari_nsg.synthetic.background import random_gradient
from napari_nsg.synthetic.bayer import mosaic
from napari_nsg.synthetic.nebula import coarse_step, random_nebula, render_smooth


# ----------------------------------------------------------------- helpers
def box_flux(image: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """Plain box sums of ``image`` around integer-rounded positions."""
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    return np.array(
        [image[j - half : j + half + 1, i - half : i + half + 1].sum(dtype=np.float64)
         for i, j in zip(ix, iy, strict=True)]
    )  # fmt: skip


def isolated(x, y, flux, radius: float, fraction: float = 0.01) -> np.ndarray:
    """Stars with no neighbour brighter than ``fraction`` of them within ``radius`` px."""
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    near = (d < radius) & (flux[None, :] > fraction * flux[:, None])
    return ~near.any(axis=1)


def centroid(image: np.ndarray, x: float, y: float, half: int) -> tuple[float, float]:
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    box = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    return (box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()


def away_from_edges(stars, shape, margin):
    ny, nx = shape
    return (
        (stars.x > margin)
        & (stars.x < nx - 1 - margin)
        & (stars.y > margin)
        & (stars.y < ny - 1 - margin)
    )


# ------------------------------------------------------------- sequences
def test_deterministic_by_seed_and_independent_of_length():
    a = simulate_sequence(3, (96, 128), seed=5, nebula=True, border=10)
    b = simulate_sequence(3, (96, 128), seed=5, nebula=True, border=10)
    c = simulate_sequence(3, (96, 128), seed=6, nebula=True, border=10)
    longer = simulate_sequence(6, (96, 128), seed=5, nebula=True, border=10)
    for k in range(3):
        fa = a.frame(k)
        np.testing.assert_array_equal(fa.data, b.frame(k).data)
        np.testing.assert_array_equal(fa.data, longer.frame(k).data)
        assert not np.array_equal(fa.data, c.frame(k).data)
        assert fa.truth.to_dict() == b.truth[k].to_dict()
    frames = list(a.iter_frames())
    np.testing.assert_array_equal(frames[2].data, a.frame(2).data)
    np.testing.assert_allclose(a.scale, b.scale)


@pytest.mark.parametrize(
    ("kwargs", "data_shape", "nchan"),
    [
        ({}, (64, 80), 1),
        ({"channels": 3}, (3, 64, 80), 3),
        ({"bayer": "RGGB"}, (64, 80), 3),
    ],
)
def test_shapes_and_dtypes(kwargs, data_shape, nchan):
    seq = simulate_sequence(2, (64, 80), seed=1, nebula=True, **kwargs)
    frame = seq.frame(1)
    assert frame.data.dtype == np.float32
    assert frame.data.shape == data_shape
    assert frame.valid.shape == (64, 80)
    for image in (frame.signal(), frame.background(), frame.relative_gradient()):
        assert image.shape == data_shape and image.dtype == np.float32
    assert frame.truth.scale.shape == (nchan,)
    assert frame.stars.flux.shape == (len(seq.catalog), nchan)
    assert ("BAYERPAT" in frame.header) == ("bayer" in kwargs)


def test_bayer_mosaic_matches_rgb_truth():
    rgb = simulate_sequence(2, (48, 64), seed=3, channels=3, nebula=True)
    cfa = simulate_sequence(2, (48, 64), seed=3, bayer="GBRG", nebula=True)
    assert cfa.frame(1).header["BAYERPAT"] == "GBRG"
    np.testing.assert_array_equal(cfa.signal(1), mosaic(rgb.signal(1), "GBRG"))
    np.testing.assert_array_equal(cfa.background(1), mosaic(rgb.background(1), "GBRG"))
    np.testing.assert_allclose(cfa.scale, rgb.scale)
    # top-left cell of GBRG: G B / R G
    assert cfa.cfa[0, 0] == 1 and cfa.cfa[0, 1] == 2 and cfa.cfa[1, 0] == 0
    # per-pixel identity through the CFA channel map
    scale_map = cfa.truth[1].scale[cfa.cfa].astype(np.float32)
    frame = cfa.frame(1)
    res = scale_map * frame.noise_free() - cfa.relative_gradient(1) - cfa.background(0)
    np.testing.assert_allclose(res, scale_map * frame.signal(), atol=0.05)


def test_headers():
    exposure = [60.0, 120.0, 60.0]
    seq = simulate_sequence(3, (32, 32), seed=2, exposure=exposure, filter_name="Ha")
    times = []
    for k, frame in enumerate(seq.iter_frames()):
        h = frame.header
        assert h["EXPTIME"] == exposure[k]
        assert h["FILTER"] == "Ha"
        assert h["XPIXSZ"] == 3.76 and h["FOCALLEN"] == 800.0
        assert h["OBJCTALT"] == h["ALTITUDE"] == pytest.approx(frame.truth.altitude, abs=1e-6)
        assert h["AIRMASS"] == pytest.approx(airmass_from_altitude(h["ALTITUDE"]), abs=1e-6)
        assert "NOISE00" not in h
        times.append(np.datetime64(h["DATE-OBS"]))
    gaps = np.diff(times).astype("timedelta64[ms]").astype(float) / 1000
    np.testing.assert_allclose(gaps, [65.0, 125.0])
    assert seq.truth[2].altitude > seq.truth[0].altitude  # the target rises

    rgb = simulate_sequence(2, (32, 32), seed=2, channels=3, noise_keywords=True)
    h = rgb.header(1)
    for c in range(3):
        assert h[f"NOISE{c:02d}"] == pytest.approx(rgb.truth[1].noise_sigma[c])
    assert "NOISE03" not in h


def _identity_residual(seq, k, *, off_signal=True):
    """scale_k * frame_k - relative_gradient_k - reference noise-free image."""
    frame = seq.frame(k)
    scale = frame.truth.scale[0]
    ref = seq.reference_image()
    res = scale * frame.data.astype(np.float64) - frame.relative_gradient() - ref
    sat = seq.saturation - 10 * frame.truth.noise_sigma[0] * max(scale, 1)
    mask = frame.valid & (frame.noise_free() < sat) & (ref < sat)
    # away from stars whose profile differs between the frames (the FWHM varies)
    sigma = frame.truth.noise_sigma[0]
    star_diff = np.abs(scale * frame.signal() - seq.signal(seq.reference))
    mask &= star_diff < 0.02 * sigma
    if off_signal:  # where the sky signal's own shot noise adds little to the background's
        mask &= frame.signal() < sigma
    return frame, scale, res, mask


def test_truth_identity_mono():
    trans = [1.0, 0.8, 0.5, 0.9]
    seq = simulate_sequence(4, (256, 256), seed=11, transmission=trans, reference=0, border=12)
    for k in range(4):
        frame, scale, res, mask = _identity_residual(seq, k)
        assert mask.mean() > 0.5
        r = res[mask]
        expected = scale * frame.truth.noise_sigma[0]
        assert abs(r.mean()) < 4 * expected / np.sqrt(r.size)
        assert r.std() == pytest.approx(expected, rel=0.03)
    assert seq.truth[2].transmission[0] == pytest.approx(0.5)
    assert seq.truth[2].scale[0] == pytest.approx(2.0)


def test_truth_identity_with_nebula_per_pixel_sigma():
    seq = simulate_sequence(3, (256, 256), seed=12, nebula=True, reference=1)
    assert seq.truth[1].is_reference and np.all(seq.truth[1].scale == 1)
    for k in (0, 2):
        frame, scale, res, mask = _identity_residual(seq, k, off_signal=False)
        assert mask.mean() > 0.7  # the nebula is in
        z = (res / (scale * frame.noise_sigma_map()))[mask]
        assert abs(z.mean()) < 0.02
        assert z.std() == pytest.approx(1.0, rel=0.02)


def test_truth_identity_rgb_per_channel():
    seq = simulate_sequence(2, (128, 128), seed=13, channels=3, fwhm=3.0)
    frame = seq.frame(1)
    t = frame.truth
    # default colour transmissions: blue is dimmed more than red
    assert t.transmission[2] < t.transmission[1] < t.transmission[0] < 1
    res = t.scale[:, None, None] * frame.data - frame.relative_gradient() - seq.reference_image()
    signal = frame.signal()
    for c in range(3):
        r = res[c][signal[c] < t.noise_sigma[c]]  # the background: no star shot noise
        assert r.std() == pytest.approx(t.scale[c] * t.noise_sigma[c], rel=0.04)


def test_reference_has_zero_relative_gradient_and_no_border():
    seq = simulate_sequence(3, (64, 64), seed=4, reference=2, border=10, jitter=0.3)
    ref = seq.frame(2)
    assert ref.valid.all()
    assert ref.truth.shift == (0.0, 0.0)
    assert not np.any(ref.relative_gradient())


def test_star_flux_ratio_matches_scale():
    trans = [1.0, 0.5, 0.75]
    seq = simulate_sequence(
        3, (384, 384), seed=21, transmission=trans, fwhm=[2.6, 3.8, 3.2],
        star_flux_range=(300.0, 3e4), star_density=1.5e-3, gradient=[300.0, 150.0, 500.0],
    )  # fmt: skip
    half = 16
    frames = [seq.frame(k) for k in range(3)]
    stars = frames[0].stars
    idx = np.nonzero((stars.flux[:, 0] > 3e4) & away_from_edges(stars, seq.shape, half + 1))[0]
    x, y = stars.x[idx], stars.y[idx]
    # boxes whose noise-free content scales like their star (neighbours' wings crossing
    # the box edge change with the FWHM: the truth tells) and holds no saturated pixel
    ref_box = box_flux(frames[0].signal(), x, y, half) / stars.flux[idx, 0]
    good = np.ones(len(idx), dtype=bool)
    for frame in frames:
        box = box_flux(frame.signal(), x, y, half) / frame.stars.flux[idx, 0]
        good &= np.abs(box / ref_box - 1) < 0.002
        clipped = ndimage.maximum_filter(frame.noise_free(), 2 * half + 1) >= seq.saturation
        good &= ~clipped[np.floor(y + 0.5).astype(int), np.floor(x + 0.5).astype(int)]
    assert good.sum() >= 15
    x, y = x[good], y[good]
    ref_flux = box_flux(frames[0].data - frames[0].background(), x, y, half)
    for frame in frames[1:]:
        flux = box_flux(frame.data - frame.background(), x, y, half)
        measured = ref_flux.sum() / flux.sum()
        assert measured == pytest.approx(frame.truth.scale[0], rel=0.01)
    assert seq.truth[1].transmission[0] == pytest.approx(0.5)


def test_zero_borders():
    seq = simulate_sequence(4, (96, 120), seed=7, border=15)
    for k in range(4):
        frame = seq.frame(k)
        if k == 0:
            assert frame.valid.all()
            continue
        assert (~frame.valid).sum() > 0
        assert np.all(frame.data[~frame.valid] == 0.0)
        assert np.all(frame.data[frame.valid] != 0.0)
        np.testing.assert_array_equal(frame.valid, seq.valid_mask(k))
    per_frame = simulate_sequence(2, (40, 40), seed=7, border=[5, 0])
    assert not per_frame.frame(0).valid.all() and per_frame.frame(1).valid.all()


def test_saturation_and_flags():
    seq = simulate_sequence(2, (256, 256), seed=8, n_bright=12)
    frame = seq.frame(1)
    s = frame.stars
    keep = isolated(s.x, s.y, s.flux[:, 0], 12, fraction=0.01)
    stars = type(s)(s.x[keep], s.y[keep], s.flux[keep], s.peak[keep], s.saturated[keep], s.id[keep])
    sat = seq.saturation
    assert frame.data.max() == np.float32(sat)
    ix = np.floor(stars.x + 0.5).astype(int)
    iy = np.floor(stars.y + 0.5).astype(int)
    centre = frame.data[iy, ix]
    noise_free = frame.noise_free()[iy, ix]
    assert stars.saturated.sum() >= 3
    margin = 5 * frame.truth.noise_sigma[0]
    assert np.all(centre[noise_free > sat + margin] == np.float32(sat))
    assert np.all(stars.saturated[noise_free > sat + margin])
    assert not np.any(stars.saturated[noise_free < 0.95 * sat])
    np.testing.assert_allclose(stars.peak[:, 0] + frame.background()[iy, ix], noise_free,
                               rtol=0.01, atol=0.05 * sat)  # fmt: skip


def test_jitter_moves_the_sky_content():
    seq = simulate_sequence(2, (160, 160), seed=9, jitter=0.7, star_density=1e-3, fwhm=3.0,
                            star_flux_range=(200.0, 3e3), n_bright=0)  # fmt: skip
    frame = seq.frame(1)
    dx, dy = frame.truth.shift
    assert abs(dx) + abs(dy) > 0.05
    np.testing.assert_allclose(frame.stars.x, seq.catalog.x + dx)
    sig, ref_sig = frame.signal(), seq.signal(0)
    stars = frame.stars
    f = stars.flux[:, 0]
    good = away_from_edges(stars, seq.shape, 12) & isolated(stars.x, stars.y, f, 15, 0.05)
    assert good.sum() >= 5
    for i in np.nonzero(good)[0]:
        cx, cy = centroid(sig, stars.x[i], stars.y[i], 8)
        rx, ry = centroid(ref_sig, seq.catalog.x[i], seq.catalog.y[i], 8)
        assert abs(cx - rx - dx) < 0.01 and abs(cy - ry - dy) < 0.01


def test_write_sequence_and_truth_json(tmp_path):
    paths = write_sequence(tmp_path, 3, (48, 64), seed=4, prefix="sub", channels=3)
    assert [p.name for p in paths] == ["sub_000.fits", "sub_001.fits", "sub_002.fits"]
    truth = read_truth(tmp_path)
    assert truth == json.loads((tmp_path / "truth.json").read_text())
    seq = simulate_sequence(3, (48, 64), seed=4, channels=3)
    assert truth["reference"] == 0 and truth["reference_file"] == "sub_000.fits"
    for k, row in enumerate(truth["frames"]):
        assert row["file"] == paths[k].name
        np.testing.assert_allclose(row["scale"], seq.truth[k].scale)
        np.testing.assert_allclose(row["noise_sigma"], seq.truth[k].noise_sigma)
    frame = read_frame(paths[1])
    np.testing.assert_array_equal(frame.data, seq.frame(1).data)
    assert frame.header["EXPTIME"] == 60.0
    with pytest.raises(Exception, match="exists"):
        write_sequence(tmp_path, 3, (48, 64), seed=4, prefix="sub", channels=3)


def test_sample_sequence():
    seq = sample_sequence()
    assert len(seq) == 5 and seq.shape == (256, 256) and seq.nebula is not None
    assert seq.truth[3].transmission[0] == pytest.approx(0.55)
    assert seq.frame(4).data.shape == (256, 256)


def test_argument_errors():
    with pytest.raises(ValueError, match="transmission"):
        simulate_sequence(3, (32, 32), transmission=[1.0, 0.5])
    with pytest.raises(ValueError, match="channels"):
        simulate_sequence(2, (32, 32), channels=2)
    with pytest.raises(ValueError, match="Bayer"):
        simulate_sequence(2, (32, 32), bayer="RGBG")
    with pytest.raises(ValueError, match="reference"):
        simulate_sequence(2, (32, 32), reference=2)


# ---------------------------------------------------------------- building blocks
@pytest.mark.parametrize("kind", ["moffat", "gaussian"])
def test_render_stars_exact_flux_and_centre(kind):
    psf = PSF(2.8, kind)
    x = np.array([20.3, 40.71, 60.5])
    y = np.array([30.62, 31.1, 40.0])
    flux = np.array([[1e3, 2e3], [5e4, 1e4], [2e2, 1e2]])
    img = render_stars((80, 90), x, y, flux, psf)
    for i in range(3):
        box = (slice(int(y[i]) - 9, int(y[i]) + 10), slice(int(x[i]) - 9, int(x[i]) + 10))
        one = render_stars((80, 90), x[i : i + 1], y[i : i + 1], flux[i : i + 1], psf)
        np.testing.assert_allclose(one.sum(axis=(1, 2)), flux[i], rtol=1e-5)
        cx, cy = centroid(one[0], x[i], y[i], 12)
        assert abs(cx - x[i]) < 0.01 and abs(cy - y[i]) < 0.01
        assert img[:, box[0], box[1]].sum() > 0
    np.testing.assert_allclose(img.sum(axis=(1, 2)), flux.sum(axis=0), rtol=1e-5)
    # a star cut by the edge keeps only its in-frame part
    edge = render_stars((40, 40), [0.0], [20.0], [1000.0], psf)
    assert 400 < edge.sum() < 700


def test_gradient_model_mean_range_and_points():
    rng = np.random.default_rng(0)
    model = random_gradient(rng, (90, 130), 250.0, channels=3)
    img = model.render()
    np.testing.assert_allclose(img.mean(axis=(1, 2)), model.mean(), rtol=1e-5)
    assert img.min() > -0.5
    assert 0.5 * 250 < np.ptp(img[1]) < 1.5 * 250
    ys, xs = np.array([0, 45, 89]), np.array([0, 70, 129])
    np.testing.assert_allclose(model.at(xs, ys), img[:, ys, xs], atol=1e-3)
    mono = random_gradient(rng, (90, 130), 250.0)
    assert np.ptp(mono.render()) == pytest.approx(250.0, rel=0.01)


def test_nebula_coarse_rendering_is_accurate():
    rng = np.random.default_rng(1)
    neb = random_nebula(
        rng, (0, 400, 0, 300), n_blobs=10, sigma_range=(12.0, 90.0), amplitude=10.0, channels=1
    )
    step = coarse_step(neb.min_sigma)
    assert step >= 2
    img = render_smooth(neb.evaluate, (300, 400), step)[0]
    yy, xx = np.mgrid[0:300:7, 0:400:7]
    exact = neb.evaluate(xx.astype(float), yy.astype(float))[0]
    assert np.abs(img[yy, xx] - exact).max() < 0.002 * neb.amplitude.max()


# --------------------------------------------------------------------- pairs
def test_pair_transform_and_star_positions():
    pair = simulate_pair((300, 400), scale_ratio=2.5, rotation_deg=25.0, shift=(5.0, -3.0),
                         distortion=0.01, seed=3)  # fmt: skip
    tf = pair.transform
    x = np.random.default_rng(0).uniform(0, 400, 500)
    y = np.random.default_rng(1).uniform(0, 300, 500)
    xb, yb = tf.wide_to_narrow(*tf.narrow_to_wide(x, y))
    assert np.abs(xb - x).max() < 1e-9 and np.abs(yb - y).max() < 1e-9
    common, i_n, i_w = np.intersect1d(pair.narrow_stars.id, pair.wide_stars.id,
                                      return_indices=True)  # fmt: skip
    # the narrow footprint is inside the wide frame: every narrow star is in the wide list
    assert len(common) == len(pair.narrow_stars) > 50
    wx, wy = tf.narrow_to_wide(pair.narrow_stars.x[i_n], pair.narrow_stars.y[i_n])
    assert np.abs(wx - pair.wide_stars.x[i_w]).max() < 0.01
    assert np.abs(wy - pair.wide_stars.y[i_w]).max() < 0.01
    corners = pair.footprint
    assert corners[:, 0].min() > 0 and corners[:, 0].max() < 399
    assert corners[:, 1].min() > 0 and corners[:, 1].max() < 299
    assert 1 / 20 <= pair.footprint_fraction <= 1 / 4


@pytest.mark.parametrize("flip", [False, True])
def test_pair_similarity_semantics(flip):
    s, rot = 3.0, 30.0
    tf = simulate_pair((120, 160), scale_ratio=s, rotation_deg=rot, flip=flip, shift=(0, 0),
                       star_density=1e-4, seed=1).transform  # fmt: skip
    p = np.array([[10.0, 20.0], [110.0, 20.0], [10.0, 90.0]])
    w = np.stack(tf.narrow_to_wide(p[:, 0], p[:, 1]), axis=1)
    v_n, v_w = p[1] - p[0], w[1] - w[0]
    assert np.linalg.norm(v_w) == pytest.approx(np.linalg.norm(v_n) / s)
    # x is mirrored first, then the axes turn by the rotation
    angle = np.radians(180.0 + rot if flip else rot)
    np.testing.assert_allclose(v_w / np.linalg.norm(v_w), [np.cos(angle), np.sin(angle)])
    u_n, u_w = p[2] - p[0], w[2] - w[0]

    def cross(a, b):
        return a[0] * b[1] - a[1] * b[0]

    handed = np.sign(cross(v_n, u_n)) * np.sign(cross(v_w, u_w))
    assert handed == (-1 if flip else 1)
    np.testing.assert_allclose(tf.matrix @ tf.inverse_matrix, np.eye(3), atol=1e-12)


def test_pair_rendering_matches_truth_positions():
    pair = simulate_pair((240, 320), scale_ratio=2.0, rotation_deg=-15.0, shift=(0, 0),
                         distortion=0.02, nebula_amplitude=0.0, star_density=3e-4,
                         star_flux_range=(5e3, 1e6), seed=5)  # fmt: skip
    stars = pair.wide_stars
    f = stars.flux[:, 0]
    good = ~stars.saturated & (f > 2e4) & away_from_edges(stars, (240, 320), 10)
    good &= isolated(stars.x, stars.y, f, 20)
    assert good.sum() >= 5
    for i in np.nonzero(good)[0]:
        cx, cy = centroid(pair.wide_signal, stars.x[i], stars.y[i], 8)
        assert abs(cx - stars.x[i]) < 0.02 and abs(cy - stars.y[i]) < 0.02


def test_pair_surface_brightness_and_gradients():
    s = 3.0
    pair = simulate_pair((200, 260), scale_ratio=s, star_density=0.0, n_bright=0,
                         wide_throughput=0.5, seed=2)  # fmt: skip
    tf = pair.transform
    yy, xx = np.mgrid[0:200:5, 0:260:5].astype(float)
    wx, wy = tf.narrow_to_wide(xx, yy)
    wide_at = ndimage.map_coordinates(pair.wide_signal.astype(np.float64), [wy, wx], order=3)
    expected = pair.narrow_signal[::5, ::5] * 0.5 * s * s
    peak = np.abs(expected).max()
    assert peak > 0
    assert np.abs(wide_at - expected).max() < 0.01 * peak
    # the narrow gradient: sizeable and >= 0; the wide one: a plane
    assert np.ptp(pair.narrow_gradient) == pytest.approx(150.0, rel=0.01)
    assert pair.narrow_gradient.min() > -0.5
    second = np.diff(pair.wide_gradient.astype(np.float64), 2, axis=1)
    assert np.abs(second).max() < 1e-3
    assert pair.wide_sky[0] == pytest.approx(500.0 * 0.5 * s * s)
    # noise in both images at the documented level
    for img, sig, bg, sigma in (
        (pair.narrow, pair.narrow_signal, pair.narrow_background, pair.narrow_noise_sigma),
        (pair.wide, pair.wide_signal, pair.wide_background, pair.wide_noise_sigma),
    ):
        res = img - sig - bg
        per_pixel = np.sqrt((sig + bg) / 1.0 + 3.0**2)
        assert (res / per_pixel).std() == pytest.approx(1.0, rel=0.03)
        assert np.sqrt(bg.mean() + 9.0) == pytest.approx(sigma[0], rel=1e-4)


def test_pair_headers_rgb_and_errors():
    pair = simulate_pair((120, 160), channels=3, seed=1, star_density=5e-4)
    assert pair.narrow.shape == pair.wide.shape == (3, 120, 160)
    ratio = pair.narrow_header["FOCALLEN"] / pair.wide_header["FOCALLEN"]
    assert ratio == pytest.approx(pair.scale_ratio)
    assert pair.narrow_header["XPIXSZ"] == pair.wide_header["XPIXSZ"]
    assert pair.narrow_noise_sigma.shape == (3,)
    with pytest.raises(ValueError, match="footprint"):
        simulate_pair((120, 160), scale_ratio=1.5, shift=(40.0, 0.0))
    small = sample_pair()
    assert small.narrow.shape == (600, 800) and small.scale_ratio == 3.0 and small.seed == 1
