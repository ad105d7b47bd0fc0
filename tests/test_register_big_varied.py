"""Big frames (> 8 Mpx, the quick star side of issue 11) in varied conditions, against the truth.

Each case simulates a 4000x3000 reference and one frame of the same field (a known rigid map),
registers the frame by :func:`~napari_nsg.core.registration.frames.register_frame` (the 4x4-binned
800 brightest stars, the quick 20 x 40 match, the full search as fallback) and by the full search
on sep's stars of the 2x2 binning (the path before the quick one), and asserts on the truth: the
RMS, at the true stars seen by both frames, of the recovered map's error (issue 11: <= 0.1 px).
The small-frame tests at the end show the failures this check found and fixed (a satellite
trail, a nebula's knots, pairs of hot pixels filling the brightest ranks; wide stars measured in
too small stamps; a rule that dropped a real reference's brightest stars) on 500x400 frames,
without and with the fix.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_nsg.core.registration import RegistrationError, frame_stars, frames
from napari_nsg.core.registration.frames import detect_reference_stars, register_frame
from napari_nsg.core.stars import detection
from napari_nsg.synthetic.dithered import FIELD_MARGIN, DitheredFrames, simulate_dithered
from napari_nsg.synthetic.psf import PSF, render_stars

BIG = (3000, 4000)  # 12 Mpx: above BIN_ABOVE_PIXELS
SEEDS = (1, 2, 3)
TRUTH_BAR = 0.1  # px RMS at the stars (issue 11)
#: The quick path may lose this much (px RMS) to the full search (it uses 800 stars, not all).
LOSS_TO_FULL = 0.03
MARGIN = 10  # px: stars this far inside both frames are the ones the error is measured at


def _sky_at(d: DitheredFrames, k: int, extra):
    """``extra(x_ref, y_ref)`` (ADU on the sky, in reference pixels) on frame ``k``'s pixels."""
    h, w = d.shape
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    a = np.radians(d.angle_deg[k])
    px, py = xx - (w - 1) / 2.0 - d.dx[k], yy - (h - 1) / 2.0 - d.dy[k]
    return extra(np.cos(a) * px + np.sin(a) * py + (w - 1) / 2.0,
                 -np.sin(a) * px + np.cos(a) * py + (h - 1) / 2.0)


def _pair(angle, shift, *, seed, shape=BIG, n_stars=1500, fwhm=3.0, sky=800.0,
          flux_range=(300.0, 60000.0), gradient=40.0, nebula=None) -> DitheredFrames:
    """A reference and one frame turned by ``angle`` (deg) and shifted by ``shift`` (px):
    :func:`~napari_nsg.synthetic.dithered.simulate_dithered`'s field and truth with a chosen
    map (Gaussian noise of the Poisson variance plus 5 ADU read noise: cheaper at 12 Mpx)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    m = FIELD_MARGIN
    xy = np.column_stack([rng.uniform(-m * w, (1 + m) * w, n_stars),
                          rng.uniform(-m * h, (1 + m) * h, n_stars)])
    flux = np.exp(rng.uniform(*np.log(flux_range), n_stars))
    d = DitheredFrames([], shape, np.array([0.0, angle]), np.array([0.0, shift[0]]),
                       np.array([0.0, shift[1]]), xy, flux, sky, float(np.sqrt(sky + 25.0)))
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for k in range(2):
        at = d.reference_to_frame(k, xy)
        seen = np.all((at > -60) & (at < np.array([w, h]) + 60), axis=1)
        img = render_stars(shape, at[seen, 0], at[seen, 1], flux[seen], PSF(fwhm))
        tilt = rng.uniform(0, 2 * np.pi)
        img += sky + gradient * ((xx / w - 0.5) * np.cos(tilt) + (yy / h - 0.5) * np.sin(tilt))
        if nebula is not None:
            img += _sky_at(d, k, nebula)
        np.clip(img, 0, None, out=img)
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= np.sqrt(img + 25.0)
        img += noise
        d.frames.append(img)
    return d


def _truth_rms(d: DitheredFrames, transform, xy=None, k=1) -> float:
    """RMS error (px) of ``transform`` at the stars (``xy``: the true ones) inside both frames."""
    xy = d.star_xy if xy is None else xy
    at = d.reference_to_frame(k, xy)
    size = np.array(d.shape[::-1])
    inside = np.all((xy > MARGIN) & (xy < size - MARGIN) & (at > MARGIN)
                    & (at < size - MARGIN), axis=1)
    err = transform(xy[inside]) - at[inside]
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def _both_paths(ref, frame, monkeypatch):
    """``(registration, quick path taken, full-search registration or None)``."""
    taken = []
    quick = frames.match_frame

    def recorded(*args, **kw):
        found = quick(*args, **kw)
        taken.append(found is not None)
        return found

    stars = detect_reference_stars(ref)
    with monkeypatch.context() as mp:
        mp.setattr(frames, "match_frame", recorded)
        reg = register_frame(ref, frame, reference_stars=stars)
    with monkeypatch.context() as mp:  # the full search on sep's stars of the frame
        mp.setattr(frames, "match_frame", lambda *a, **k: None)
        mp.setattr(frames, "detect_frame_stars", detect_reference_stars)
        try:
            full = register_frame(ref, frame, reference_stars=stars)
        except RegistrationError:
            full = None
    return reg, taken == [True], full


def _nebula(xr, yr):
    """A bright nebula (6000 ADU over a sky of 800) filling the upper left of the field."""
    return 6000.0 * np.exp(-((xr - 1000.0) ** 2 + (yr - 900.0) ** 2) / (2 * 700.0**2))


def _add_knots(d: DitheredFrames, seed: int, n: int = 300, centre=(1200, 1100), spread=700):
    """``n`` Gaussian knots (sigma 4-15 px, 500-4000 ADU) on the sky round ``centre``:
    a nebula's condensations or small galaxies, brighter in a stamp than most stars."""
    rng = np.random.default_rng(100 + seed)
    xy = np.column_stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)]) * spread + centre
    sigma, amp = rng.uniform(4, 15, n), rng.uniform(500, 4000, n)
    h, w = d.shape
    for k in range(len(d.frames)):
        for (x, y), s, a in zip(d.reference_to_frame(k, xy), sigma, amp, strict=True):
            r = int(5 * s)
            x0, x1, y0, y1 = max(0, int(x) - r), min(w, int(x) + r + 1), max(0, int(y) - r), \
                min(h, int(y) + r + 1)
            if x0 < x1 and y0 < y1:
                yy, xx = np.mgrid[y0:y1, x0:x1]
                blob = a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
                d.frames[k][y0:y1, x0:x1] += blob.astype(np.float32)


def _add_trail(image, seed, level=3000.0):
    """A satellite trail (3 px, ``level`` ADU) across the image."""
    h, w = image.shape
    line = np.zeros_like(image)
    cv2.line(line, (0, h // 15 + 100 * seed), (w - 1, h - h // 15 - 50 * seed), level, 3)
    image += cv2.GaussianBlur(line, (0, 0), 1.0)


def _hot_and_trail(d, seed):
    frame = d.frames[1]
    _add_trail(frame, seed)
    rng = np.random.default_rng(seed)
    n = 3000  # hot pixels of 5000-60000 ADU, most brighter in a 4x4 bin than the stars
    frame[rng.integers(0, BIG[0], n), rng.integers(0, BIG[1], n)] += rng.uniform(5e3, 6e4, n)


def _zeros_and_borders(d, seed):
    rng = np.random.default_rng(seed)
    for f in d.frames:  # isolated camera zeros, 0.1 % of the pixels
        f.reshape(-1)[rng.integers(0, f.size, f.size // 1000)] = 0.0
    d.frames[1][:, :250] = 0.0  # no-data borders (an earlier crop or registration)
    d.frames[1][-180:, :] = 0.0
    d.frames[0][:120, :] = 0.0


def _clipped(d, seed):
    for f in d.frames:
        np.minimum(f, 65535.0, out=f)


# name: (map and field, what is done to the frames after); 4000x3000, FWHM 3 px unless said
CASES = {
    "plain": ({"angle": 2.0, "shift": (25, -18)}, None),
    "sparse ~100 stars": ({"angle": 1.5, "shift": (20, 12), "n_stars": 290}, None),
    "sparse ~30 stars, flip": ({"angle": 180.5, "shift": (150, -90), "n_stars": 90}, None),
    "crowded ~15000 stars": ({"angle": 1.0, "shift": (10, 8), "n_stars": 45000}, None),
    "fwhm 1.3": ({"angle": 2.5, "shift": (17, -9), "fwhm": 1.3}, None),
    "fwhm 1.8": ({"angle": -2.5, "shift": (-17, 9), "fwhm": 1.8}, None),
    "fwhm 8": ({"angle": 3.0, "shift": (22, 14), "fwhm": 8.0, "flux_range": (3e3, 6e5)}, None),
    "no rotation": ({"angle": 0.0, "shift": (7.3, -4.6)}, None),
    "rotation 5": ({"angle": 5.0, "shift": (5, -5)}, None),
    "rotation 90": ({"angle": 90.0, "shift": (12, -30)}, None),
    "rotation 180": ({"angle": 181.0, "shift": (-15, 22)}, None),
    "shift 380 px, rotation 4.5": ({"angle": 4.5, "shift": (-380, 260)}, None),
    "gradient 3000 ADU": ({"angle": 1.0, "shift": (12, 3), "gradient": 3000.0}, None),
    "bright nebula": ({"angle": 1.2, "shift": (-30, 14), "nebula": _nebula}, None),
    "nebula knots": ({"angle": 1.5, "shift": (20, -25), "nebula": _nebula}, _add_knots),
    "faint stars, sky 3000": ({"angle": 2.0, "shift": (10, 10), "sky": 3000.0,
                                   "flux_range": (200, 8000), "n_stars": 3000}, None),
    "saturated stars": ({"angle": 0.7, "shift": (9, 9), "flux_range": (300, 3e6)}, _clipped),
    "hot pixels, trail": ({"angle": -1.0, "shift": (-12, 30)}, _hot_and_trail),
    "camera zeros, borders": ({"angle": 2.0, "shift": (30, 10)}, _zeros_and_borders),
}


#: The faint field (sky 3000 ADU, stars of at most 8000 ADU): sep finds only 12-18 reference
#: stars and the quick path pairs 12-17; an affine map fitted to their noisy centroids was
#: 0.13 px off for seed 3 (a strict xfail until the model was chosen by the pairs' F-test,
#: frames.py: now the similarity, 0.061-0.064 px for seeds 1-3).
@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(CASES))
def test_big_frame_registers_within_the_bar(case, seed, monkeypatch):
    kw, after = CASES[case]
    d = _pair(seed=seed, **kw)
    if after is not None:
        after(d, seed)
    reg, quick, full = _both_paths(d.frames[0], d.frames[1], monkeypatch)
    rms = _truth_rms(d, reg.transform)
    # measured (seeds 1-3): 0.0015-0.03 px (faint field 0.06-0.07 with the model the pairs support; 0.13 with an affine map), the quick path in every
    # case; the full search 0.0012-0.045 px, failing the faint seed 2 and the hot pixels
    assert rms < TRUTH_BAR, (case, seed, rms, reg.n_pairs)
    assert quick, (case, seed)
    angle = (d.angle_deg[1] + 180) % 360 - 180
    assert abs(((reg.rotation_deg - angle) + 180) % 360 - 180) < 0.05
    if full is not None:  # the full search fails on the hot pixels (sep keeps some)
        assert rms < _truth_rms(d, full.transform) + LOSS_TO_FULL, (case, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_big_colour_frame_with_a_flip(seed, monkeypatch):
    d = _pair(181.5, (40, -10), seed=seed)
    colour = [np.stack([0.6 * f + 50, f, 1.3 * f - 100]) for f in d.frames]
    reg, quick, full = _both_paths(colour[0], colour[1], monkeypatch)
    rms = _truth_rms(d, reg.transform)
    assert quick and rms < TRUTH_BAR, rms
    assert rms < _truth_rms(d, full.transform) + LOSS_TO_FULL


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize(("angle", "shift"), [(1.5, (40.3, -25.7)), (180.7, (-12.2, 31.9))])
def test_real_frame_upscaled_and_turned(real_data, angle, shift, monkeypatch):
    """A real frame (wasp12b, 1020x912) upscaled 3x to 8.4 Mpx (stars of FWHM ~10 px) and turned
    and shifted by a known map (Lanczos, no data where it does not cover), independent noise
    added to both; the error is measured at the reference's stars."""
    from napari_nsg.io import read_frame

    real = read_frame(real_data / "wasp12b_calibrated" / "wasp12b_300.fits").data
    ref = cv2.resize(np.asarray(real, np.float32), None, fx=3, fy=3,
                     interpolation=cv2.INTER_CUBIC)
    h, w = ref.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -angle, 1.0)
    m[:, 2] += shift  # reference pixel -> frame pixel: frame = ref warped by m
    frame = cv2.warpAffine(ref, m, (w, h), flags=cv2.INTER_LANCZOS4,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    rng = np.random.default_rng(0)
    noise = float(np.std(real[:50, :50]))
    ref = ref + rng.normal(0, noise / 3, ref.shape).astype(np.float32)
    frame = np.where(frame != 0, frame + rng.normal(0, noise / 3, frame.shape), 0)
    reg, quick, full = _both_paths(ref, frame.astype(np.float32), monkeypatch)
    at = detect_reference_stars(ref).xy
    true_at = at @ m[:, :2].T + m[:, 2]
    inside = np.all((true_at > MARGIN) & (true_at < np.array([w, h]) - MARGIN), axis=1)
    err = reg.transform(at[inside]) - true_at[inside]
    rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
    assert h * w > frames.BIN_ABOVE_PIXELS and quick and rms < TRUTH_BAR, rms
    full_err = full.transform(at[inside]) - true_at[inside]
    # measured: quick 0.019 / 0.013 px (54 / 55 pairs), the full search 0.019 / 0.014 (56 / 58);
    # before the stamps grew with the stars the quick path was 1.65 px off, before the paired
    # frame stars were re-measured in the reference's window 0.07-0.10 px
    assert rms < 5 * float(np.sqrt(np.mean(np.sum(full_err**2, axis=1)))) + 0.01


# --- the failures found, on small frames (the quick star side forced on 500x400) ------------

@pytest.fixture
def small_quick(monkeypatch):
    monkeypatch.setattr(frames, "BIN_ABOVE_PIXELS", 10_000)
    monkeypatch.setattr(frames, "MAX_FRAME_STARS", 100)


def _true_fraction(d, k, stars, n):
    from scipy.spatial import cKDTree

    dist = cKDTree(d.reference_to_frame(k, d.star_xy)).query(stars.xy[:n])[0]
    return float(np.mean(dist < 0.5))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_trail_does_not_take_the_brightest_ranks(seed, small_quick, monkeypatch):
    """A satellite trail of 3000 ADU: every stamp along it outshines most stars. Without the
    compactness rule (EXTENDED_RATIO infinite: the code before it) the 20 brightest "stars"
    were all on the trail (measured 0 of 20 true, seeds 1-3) and the 12 Mpx frame fell to
    the full search, which failed; with it 20 of 20 are stars."""
    d = simulate_dithered(2, (400, 500), seed=seed, max_shift=30.0, max_angle=3.0)
    frame = d.frames[1].copy()
    _add_trail(frame, 0)
    assert _true_fraction(d, 1, frame_stars.bright_stars(frame, 100), 20) >= 0.9
    with monkeypatch.context() as mp:
        mp.setattr(frame_stars, "EXTENDED_RATIO", np.inf)
        assert _true_fraction(d, 1, frame_stars.bright_stars(frame, 100), 20) < 0.3
    reg = register_frame(d.frames[0], frame, model="similarity")
    assert _truth_rms(d, reg.transform) < 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_a_nebulas_knots_do_not_take_the_brightest_ranks(seed, small_quick, monkeypatch):
    """Knots of a nebula (sigma 4-15 px, on the sky: in the reference and the frame) outshine
    the stars in a stamp and in sep's flux. Without the rule the 20 brightest of the frame and
    of the reference were knots (measured 0-2 of 20 true), the quick match of the 12 Mpx
    frame failed and the full search after it too (142 s); with it the frame's 20 brightest
    are 17-19 stars and the reference's quick-match stars are stars."""
    from napari_nsg.core.registration.frame_match import reference_index

    d = simulate_dithered(2, (400, 500), seed=seed, max_shift=30.0, max_angle=3.0)
    _add_knots(d, seed, n=40, centre=(250, 200), spread=180)
    assert _true_fraction(d, 1, frame_stars.bright_stars(d.frames[1], 100), 20) >= 0.8
    stars = detect_reference_stars(d.frames[0])
    assert _true_fraction(d, 0, reference_index(d.frames[0], stars).stars, 20) >= 0.8
    with monkeypatch.context() as mp:
        mp.setattr(frame_stars, "EXTENDED_RATIO", np.inf)
        assert _true_fraction(d, 1, frame_stars.bright_stars(d.frames[1], 100), 20) < 0.3
        assert _true_fraction(d, 0, reference_index(d.frames[0].copy(), stars).stars, 20) < 0.3
    reg = register_frame(d.frames[0], d.frames[1], model="similarity", reference_stars=stars)
    assert _truth_rms(d, reg.transform) < 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_hot_pixel_pairs_do_not_take_the_brightest_ranks(seed, small_quick, monkeypatch):
    """Two hot pixels in one binned neighbourhood share its light and pass the binned
    hot-pixel test (HOT_FRACTION); their stamps' brightest pixel has dark neighbours, a star's
    never (stars.detection.LONE_PEAK_FRACTION). Without that test 3000 hot pixels of a 12 Mpx frame took 38
    of its 40 brightest ranks and the quick match failed (the full search then took 9-14 s)."""
    d = simulate_dithered(2, (400, 500), seed=seed, max_shift=30.0, max_angle=3.0)
    frame = d.frames[1].copy()
    rng = np.random.default_rng(seed)
    y, x = rng.integers(10, 385, 60), rng.integers(10, 485, 60)
    for dy, dx in ((0, 0), (5, 3)):  # pairs 5 px apart: one binned neighbourhood
        frame[y + dy, x + dx] += rng.uniform(2e4, 6e4, 60).astype(np.float32)
    assert _true_fraction(d, 1, frame_stars.bright_stars(frame, 100), 20) >= 0.9
    with monkeypatch.context() as mp:
        mp.setattr(detection, "LONE_PEAK_FRACTION", -np.inf)
        assert _true_fraction(d, 1, frame_stars.bright_stars(frame, 100), 20) < 0.5


def test_wide_stars_are_measured_in_wider_stamps(small_quick, monkeypatch):
    """Stars of FWHM 14 px: the first stamps (radius 8 px) cap their FWHM near 8 px; the
    stamps grow until they hold 1.5 FWHM, and the maxima of one wide star are one star."""
    from scipy.spatial import cKDTree

    d = simulate_dithered(2, (400, 500), seed=1, max_shift=30.0, max_angle=3.0, fwhm=14.0,
                          n_stars=60, flux_range=(3e4, 3e6))
    stars = frame_stars.bright_stars(d.frames[1], 100)
    assert abs(np.median(stars.fwhm) - 14.0) < 3.0
    assert len(cKDTree(stars.xy).query_pairs(7.0)) == 0
    with monkeypatch.context() as mp:
        mp.setattr(frame_stars, "MAX_RADIUS", 8)
        assert np.median(frame_stars.bright_stars(d.frames[1], 100).fwhm) < 10.0
    reg = register_frame(d.frames[0], d.frames[1], model="similarity")
    assert _truth_rms(d, reg.transform) < TRUTH_BAR


@pytest.mark.real
def test_reference_keeps_its_brightest_real_stars(real_data):
    """The compactness rule on the reference takes flux over peak, not sep's FWHM (which grows
    with the brightness: on it the 9 brightest stars of this real frame were dropped, the
    ones the quick match starts from)."""
    from napari_nsg.core.registration.frame_match import reference_index
    from napari_nsg.io import read_frame

    for name in ("wasp12b_300.fits", "wasp12b_420.fits"):
        ref = np.asarray(read_frame(real_data / "wasp12b_calibrated" / name).data, np.float32)
        stars = detect_reference_stars(ref)
        kept = reference_index(ref, stars).stars
        np.testing.assert_array_equal(kept.xy[:20], stars.xy[:20])
        assert len(kept) >= 0.9 * len(stars)
