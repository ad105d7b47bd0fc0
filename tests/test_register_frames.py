"""Registering sub-frames onto a reference: simulated dithers, resampling, real frames."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core.registration import RegistrationError, frames
from napari_nsg.core.registration.frames import (
    FRAME_MODELS,
    RESAMPLERS,
    detect_reference_stars,
    register_frame,
    release_scratch,
    resample,
)
from napari_nsg.core.registration.refine import windowed_centroids
from napari_nsg.core.registration.transforms import WideTransform
from napari_nsg.synthetic.dithered import simulate_dithered
from napari_nsg.synthetic.psf import PSF, render_stars

SHAPE = (400, 500)
FLIPPED = 5


@pytest.fixture(scope="module")
def dithered():
    return simulate_dithered(6, SHAPE, seed=2, max_shift=30.0, max_angle=3.0,
                             flip_frame=FLIPPED)


def _stars_inside(d, margin=5):
    h, w = d.shape
    xy = d.star_xy
    ok = ((xy[:, 0] > margin) & (xy[:, 0] < w - margin) & (xy[:, 1] > margin)
          & (xy[:, 1] < h - margin))
    return xy[ok]


@pytest.mark.parametrize("model", FRAME_MODELS)
def test_transforms_recovered_within_a_tenth_of_a_pixel(dithered, model):
    d = dithered
    stars = detect_reference_stars(d.frames[0])
    at = _stars_inside(d)
    assert max(abs(d.dx).max(), abs(d.dy).max()) > 20 and abs(d.angle_deg[FLIPPED]) > 177
    for k in range(1, len(d.frames)):
        reg = register_frame(d.frames[0], d.frames[k], model=model, reference_stars=stars)
        err = reg.transform(at) - d.reference_to_frame(k, at)
        rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
        # measured: 0.004-0.038 px RMS over all reference stars (similarity .. projective)
        assert rms < 0.1, (k, rms)
        angle = (d.angle_deg[k] + 180) % 360 - 180
        assert abs(((reg.rotation_deg - angle) + 180) % 360 - 180) < 0.05
        assert reg.residual_px < 0.2 and not reg.flip
        assert abs(reg.scale - 1) < 1e-3


def test_distortion_term_and_model_fallback(dithered):
    d = dithered
    reg = register_frame(d.frames[0], d.frames[1], model="projective", distortion=True)
    at = _stars_inside(d)
    err = reg.transform(at) - d.reference_to_frame(1, at)
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.1
    # fewer pairs than a homography needs: said in a warning; the truth is a similarity,
    # which the F-test keeps whenever the pairs cannot reject it
    if reg.n_pairs < 30:
        assert any("model instead of projective" in w for w in reg.warnings)
    assert reg.model in ("similarity", "affine", "projective")


def _pairs(matrix, n, seed, noise=0.05, size=3000.0):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, size, (n, 2))
    dst = WideTransform(homography=matrix)(src) + rng.normal(0, noise, (n, 2))
    return src, dst


@pytest.mark.parametrize("seed", range(5))
def test_the_pairs_choose_the_model(seed):
    turn = np.radians(1.3)
    sim = np.array([[np.cos(turn), -np.sin(turn), 12.0], [np.sin(turn), np.cos(turn), -7.0],
                    [0, 0, 1]])
    shear = sim @ np.array([[1.0, 4e-4, 0], [0, 1.0 - 3e-4, 0], [0, 0, 1]])  # ~1 px over 3000
    tilt = shear @ np.array([[1, 0, 0], [0, 1, 0], [4e-7, -3e-7, 1.0]])
    for truth, n, expected in ((sim, 14, "similarity"), (sim, 200, "similarity"),
                               (shear, 60, "affine"), (tilt, 200, "projective")):
        src, dst = _pairs(truth, n, seed)
        used, h = frames._model_by_evidence("projective", src, dst, False)
        assert used == expected, (n, used)
        err = WideTransform(homography=h)(src) - WideTransform(homography=truth)(src)
        assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.05


def test_other_field_is_not_registered(dithered):
    other = simulate_dithered(2, SHAPE, seed=99)
    with pytest.raises(RegistrationError):
        register_frame(dithered.frames[0], other.frames[1])


def test_registered_frame_matches_the_reference(dithered):
    d = dithered
    reg = register_frame(d.frames[0], d.frames[FLIPPED])
    out, coverage = resample(d.frames[FLIPPED], reg.transform, SHAPE)
    where = d.reference_to_frame(FLIPPED, np.argwhere(np.ones(SHAPE))[:, ::-1])
    h, w = SHAPE

    def within(m):  # sample points at least ``m`` px inside the frame's pixel area
        return ((where[:, 0] >= -0.5 + m) & (where[:, 0] <= w - 0.5 - m)
                & (where[:, 1] >= -0.5 + m) & (where[:, 1] <= h - 0.5 - m))

    assert abs(coverage - within(0).mean()) < 0.005
    flat = out.reshape(-1)
    assert (flat[~within(-0.1)] == 0).all()  # no data where the frame does not cover
    assert (flat[within(0.1)] != 0).all()
    diff = (out - d.frames[0])[(out != 0)]
    # registered flip frame minus reference: noise only (2 frames, sigma each ~29 ADU), no star
    # residue; measured std 42 ADU (sqrt(2) x 29, plus the gradients)
    assert np.std(diff) < 1.8 * d.noise


def test_lanczos_floor_removes_rings_and_keeps_peaks():
    rng = np.random.default_rng(0)
    h = w = 200
    x, y = rng.uniform(10, 190, 60), rng.uniform(10, 190, 60)
    flux = np.full(60, 5e4)
    img = render_stars((h, w), x, y, flux, PSF(1.5)) + 100.0
    truth = render_stars((h, w), x - 0.5, y - 0.37, flux, PSF(1.5)) + 100.0
    shift = WideTransform(homography=np.array([[1, 0, 0.5], [0, 1, 0.37], [0, 0, 1.0]]))
    inner = (slice(15, 185), slice(15, 185))
    res = {m: resample(img, shift, (h, w), method=m)[0][inner] for m in RESAMPLERS}
    under = {m: (r.min() - 100) / truth.max() for m, r in res.items()}
    peak = {m: np.abs(r - truth[inner]).max() / truth.max() for m, r in res.items()}
    # measured (FWHM 1.5 px): undershoot lanczos -0.42 %, cubic -0.62 %, lanczos-clamped 0;
    # worst peak error lanczos(-clamped) 22 %, cubic 26 %, linear 44 %
    assert under["lanczos"] < -0.002 and under["cubic"] < -0.002
    assert under["lanczos-clamped"] >= 0
    assert peak["lanczos-clamped"] == pytest.approx(peak["lanczos"], abs=1e-6)
    assert peak["lanczos-clamped"] < 0.6 * peak["linear"]
    flux_ratio = (res["lanczos-clamped"] - 100).sum() / (truth[inner] - 100).sum()
    assert abs(flux_ratio - 1) < 0.01  # measured +0.6 %


def test_homography_fast_path_agrees_with_the_coordinate_maps(dithered):
    """The fused warpPerspective path (floor, no data, coverage in one pass each) gives what the
    generic remap path gives for the same map, which is evaluated per pixel from coordinates."""
    d = dithered
    frame = d.frames[FLIPPED].copy()
    frame[100:110, 200:260] = 0.0  # a no-data block inside the frame
    frame[300, 50] = np.nan
    reg = register_frame(d.frames[0], d.frames[FLIPPED], model="projective")
    fast, cov_fast = resample(frame, reg.transform, SHAPE)
    maps, cov_maps = resample(frame, lambda xy: reg.transform(xy), SHAPE)  # not a WideTransform
    # measured: the same no-data pixels and coverage (0.92533) in both
    assert ((fast != 0) == (maps != 0)).mean() > 0.9999
    assert abs(cov_fast - cov_maps) < 1e-4
    both = (fast != 0) & (maps != 0)
    diff = np.abs(fast - maps)[both]
    # both quantise positions to 1/32 px, the maps from a 32 px grid of nodes: measured median
    # 0, 99.9th percentile 0.72 ADU (noise 29 ADU), worst 3.6 % of the pixel (a star's slope)
    assert np.percentile(diff, 99.9) < 0.05 * d.noise
    assert (diff / np.maximum(np.abs(maps[both]), 1.0)).max() < 0.05
    assert (fast[both] >= 0).all() and not np.isnan(fast).any()


def test_resample_outputs_do_not_share_the_kept_work_arrays(dithered):
    """The work arrays kept from frame to frame never leak into a returned image."""
    d = dithered
    regs = [register_frame(d.frames[0], d.frames[k]) for k in (1, FLIPPED)]
    first, cov1 = resample(d.frames[1], regs[0].transform, SHAPE)
    kept = first.copy()
    second, _ = resample(d.frames[FLIPPED], regs[1].transform, SHAPE)
    np.testing.assert_array_equal(first, kept)  # not overwritten by the next frame
    assert not np.shares_memory(first, second)
    release_scratch()
    again, cov2 = resample(d.frames[1], regs[0].transform, SHAPE)
    np.testing.assert_array_equal(again, first)
    assert cov2 == cov1


def test_colour_and_no_data_edges(dithered):
    d = dithered
    rgb = np.stack([d.frames[2], 0.8 * d.frames[2], 1.2 * d.frames[2]])
    rgb[:, :20, :] = 0.0  # a no-data band in the frame
    reg = register_frame(np.stack([d.frames[0]] * 3), rgb)
    out, _ = resample(rgb, reg.transform, SHAPE)
    assert out.shape == (3, *SHAPE)
    np.testing.assert_allclose(out[1][out[0] != 0], 0.8 * out[0][out[0] != 0], rtol=1e-4)
    band = reg.transform(np.array([[250.0, 5.0]]))  # where does frame row <20 map from?
    assert np.isfinite(band).all()
    assert not np.isnan(out).any()


@pytest.mark.real
@pytest.mark.slow
def test_seestar_m94_registers_including_the_rotated_night(real_data):
    from napari_nsg.io import read_frame

    files = sorted((real_data / "seestar_m94").glob("*.fit"))
    frames = [read_frame(f, debayer="superpixel").data for f in files]
    ref = frames[0]
    rots = []
    for f in frames[1:]:
        reg = register_frame(ref, f)
        # measured: 0.107-0.115 px residual from 11-20 pairs
        assert reg.residual_px < 0.3 and reg.n_pairs >= 8
        rots.append(reg.rotation_deg)
    assert abs(rots[-1] + 69.4) < 1.0  # night 3 is rotated by ~69 degrees
    assert all(abs(r) < 1 for r in rots[:-1])


def test_overlapped_serial_run_equals_frame_by_frame(dithered, tmp_path):
    """The serial pipeline (read / register / write overlapped) gives the rows and files of
    ``process_frame`` one frame at a time, in order; a bad frame in the middle is its row."""
    from astropy.io import fits

    from napari_nsg.pipeline.register import _prepare, pipelined_frames, process_frame

    paths = dithered.write(tmp_path / "in")[:4]
    broken = tmp_path / "in" / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    frames = [paths[0], paths[1], broken, paths[2], paths[3]]
    outs = {}
    for name in ("one", "piped"):
        (tmp_path / name).mkdir()
        job = _prepare(paths[0], tmp_path / name, None, "projective", False, "lanczos-clamped")
        items = [(str(f), f == paths[0], False) for f in frames]
        if name == "one":
            rows = [process_frame(job, item) for item in items]
        else:
            got = list(pipelined_frames(job, items))
            assert [k for k, _ in got] == list(range(len(frames)))
            rows = [row for _, row in got]
        outs[name] = rows
    for a, b in zip(outs["one"], outs["piped"], strict=True):
        assert (a.error is None) == (b.error is None) and a.residual_px == b.residual_px
        assert a.coverage == b.coverage and a.n_pairs == b.n_pairs
    assert outs["piped"][2].error and "broken" not in (outs["piped"][3].error or "")
    for row in outs["one"]:
        if row.output:
            other = str(row.output).replace(f"{tmp_path}/one", f"{tmp_path}/piped")
            np.testing.assert_array_equal(fits.getdata(row.output), fits.getdata(other))


def _truth_homography(d, k):
    """The simulator's reference -> frame ``k`` map (a rotation and a shift) as a 3x3 matrix."""
    p = d.reference_to_frame(k, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    ex, ey = p[1] - p[0], p[2] - p[0]
    return np.array([[ex[0], ey[0], p[0, 0]], [ex[1], ey[1], p[0, 1]], [0.0, 0.0, 1.0]])


def _opencv_only(monkeypatch):
    """Resample through OpenCV's 2-D Lanczos warp (no shear plan)."""
    from napari_nsg.core.registration import frames

    monkeypatch.setattr(frames, "shear_plan", lambda *args, **kwargs: None)


def test_shear_passes_register_like_the_2d_kernel(dithered, monkeypatch):
    """Rotations and shifts (the flip included) through the three shear passes: the coverage
    and no-data pixels of OpenCV's 2-D warp, and no worse a match to the reference."""
    from napari_nsg.core.registration.separable import shear_plan

    d = dithered
    for k in range(1, len(d.frames)):
        h = _truth_homography(d, k)
        plan = shear_plan(h, SHAPE, SHAPE)
        assert plan is not None and plan.quarter == (2 if k == FLIPPED else 0)
        assert plan.deviation < 1e-6  # a rigid map is applied exactly
        fast, cov_fast = resample(d.frames[k], WideTransform(homography=h), SHAPE)
        with monkeypatch.context() as m:
            _opencv_only(m)
            slow, cov_slow = resample(d.frames[k], WideTransform(homography=h), SHAPE)
        # measured: coverage equal within 2e-4, zero pixels the same but for a few on the edge
        assert abs(cov_fast - cov_slow) < 1e-3
        assert ((fast != 0) == (slow != 0)).mean() > 0.999
        both = (fast != 0) & (slow != 0)
        res_fast = np.std((fast - d.frames[0])[both])
        res_slow = np.std((slow - d.frames[0])[both])
        # measured: the shears average the noise a little more (lower residual)
        assert res_fast < 1.01 * res_slow and res_fast < 1.8 * d.noise


def test_quarter_turns_and_integer_shifts_are_exact(dithered):
    """A turn by 90, 180, 270 degrees and an integer shift move pixels without interpolating."""
    ref = dithered.frames[0]
    h, w = SHAPE
    turns = {1: [[0.0, -1, w - 1], [1, 0, 0]], 2: [[-1.0, 0, w - 1], [0, -1, h - 1]],
             3: [[0.0, 1, 0], [-1, 0, h - 1]]}  # pixel p of rot90(ref, q) is pixel E p of ref
    for q, e in turns.items():
        back = np.linalg.inv(np.vstack([e, [0, 0, 1]]))  # reference pixel -> turned pixel
        out, cov = resample(np.rot90(ref, q), WideTransform(homography=back), SHAPE)
        assert cov == 1.0
        np.testing.assert_allclose(out, ref, rtol=1e-5)
    shift = np.array([[1.0, 0, 3], [0, 1, -2], [0, 0, 1]])
    out, cov = resample(ref, WideTransform(homography=shift), SHAPE)
    np.testing.assert_allclose(out[2:, :w - 3], ref[:h - 2, 3:], rtol=1e-5)
    assert (out[:2] == 0).all() and (out[:, w - 3:] == 0).all()
    assert cov == pytest.approx((h - 2) * (w - 3) / (h * w))


def test_shear_passes_no_data_as_the_2d_kernel(dithered, monkeypatch):
    d = dithered
    frame = d.frames[FLIPPED].copy()
    frame[100:110, 200:260] = 0.0
    frame[300, 50] = np.nan
    t = WideTransform(homography=_truth_homography(d, FLIPPED))
    fast, cov_fast = resample(frame, t, SHAPE)
    clean, _ = resample(d.frames[FLIPPED], t, SHAPE)
    _opencv_only(monkeypatch)
    slow, cov_slow = resample(frame, t, SHAPE)
    assert not np.isnan(fast).any() and abs(cov_fast - cov_slow) < 1e-3
    assert ((fast != 0) == (slow != 0)).mean() > 0.999
    holes = {k: int(((r == 0) & (clean != 0)).sum()) for k, r in (("fast", fast), ("slow", slow))}
    # measured: 451 and 474 pixels made no data by the block and the NaN (their kernel's reach)
    assert holes["fast"] > 400 and abs(holes["fast"] - holes["slow"]) < 0.1 * holes["slow"]


def test_shear_plan_only_for_maps_it_applies_within_its_tolerance():
    from napari_nsg.core.registration.separable import MAX_DEVIATION, shear_plan

    big = (4000, 6000)
    rot = np.deg2rad(30.0)
    rigid = np.array([[np.cos(rot), -np.sin(rot), 40.3], [np.sin(rot), np.cos(rot), -7.1],
                      [0, 0, 1]])
    assert shear_plan(rigid, big, big).deviation < 1e-6
    mirrored = np.diag([-1.0, 1.0, 1.0])
    assert shear_plan(mirrored, big, big) is None
    scaled = np.diag([1.0001, 1.0001, 1.0])  # 0.36 px at the corners: left to OpenCV
    assert shear_plan(scaled, big, big) is None
    assert shear_plan(np.diag([1.000002, 1.000002, 1.0]), big, big) is not None  # 0.007 px
    tilted = rigid.copy()
    tilted[2, 0] = 1e-7  # perspective: about 0.5 px over the frame
    assert shear_plan(tilted, big, big) is None
    slight = rigid.copy()
    slight[2, 0] = 1e-11
    assert shear_plan(slight, big, big).deviation < MAX_DEVIATION


def test_shear_passes_keep_star_peaks_of_a_rotated_field(monkeypatch):
    """Stars of FWHM 2 px rotated by 2.7 degrees about the centre and shifted: the shears
    (x interpolated twice) against OpenCV's 2-D Lanczos-4 and the exactly rendered truth."""
    rng = np.random.default_rng(0)
    h = w = 200
    x, y = rng.uniform(10, 190, 60), rng.uniform(10, 190, 60)
    flux = np.full(60, 5e4)
    a = np.deg2rad(2.7)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([99.5, 99.5])
    hom = np.vstack([np.column_stack([m, c - m @ c + [0.5, 0.37]]), [0, 0, 1]])
    inv = np.linalg.inv(hom)
    tx, ty = (inv[:2, :2] @ np.vstack([x, y])) + inv[:2, 2:]
    img = render_stars((h, w), x, y, flux, PSF(2.0)) + 100.0
    truth = render_stars((h, w), tx, ty, flux, PSF(2.0)) + 100.0
    inner = (slice(15, 185), slice(15, 185))
    t = WideTransform(homography=hom)
    fast = resample(img, t, (h, w))[0][inner]
    _opencv_only(monkeypatch)
    slow = resample(img, t, (h, w))[0][inner]
    top = truth.max()
    peak = {k: np.abs(r - truth[inner]).max() / top for k, r in (("fast", fast), ("slow", slow))}
    # measured: peak error 7.2 % (shears) against 8.0 % (2-D), no undershoot, flux +0.10 %
    assert peak["fast"] < 1.05 * peak["slow"]
    assert fast.min() >= 100 - 1e-3
    assert abs((fast - 100).sum() / (truth[inner] - 100).sum() - 1) < 0.005



def test_shear_passes_colour_and_a_large_rotation(dithered, monkeypatch):
    """A colour frame through a rotation of 69 degrees (a quarter turn and shears of 21
    degrees, as the other night of seestar_m94): each channel as the mono frame, and the
    coverage, no-data pixels and values of OpenCV's 2-D warp."""
    from napari_nsg.core.registration.separable import shear_plan

    d = dithered
    a = np.deg2rad(69.0)
    c = np.array([(SHAPE[1] - 1) / 2.0, (SHAPE[0] - 1) / 2.0])
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    hom = np.vstack([np.column_stack([m, c - m @ c + [3.3, -1.7]]), [0, 0, 1]])
    plan = shear_plan(hom, SHAPE, SHAPE)
    assert plan is not None and plan.quarter in (1, 3)
    rgb = np.stack([d.frames[1], 0.5 * d.frames[1], 2.0 * d.frames[1]])
    t = WideTransform(homography=hom)
    fast, cov_fast = resample(rgb, t, SHAPE)
    mono, _ = resample(d.frames[1], t, SHAPE)
    np.testing.assert_array_equal(fast[0], mono)
    np.testing.assert_allclose(fast[1], 0.5 * mono, rtol=1e-5, atol=1e-3)
    _opencv_only(monkeypatch)
    slow, cov_slow = resample(d.frames[1], t, SHAPE)
    # measured: coverage 0.8245 both, zero pixels the same, median |diff| 0.15 sigma of the noise
    assert abs(cov_fast - cov_slow) < 1e-3 and ((mono != 0) == (slow != 0)).mean() > 0.999
    both = (mono != 0) & (slow != 0)
    assert np.median(np.abs(mono - slow)[both]) < 0.25 * d.noise


def test_work_arrays_made_ahead_serve_the_dithers(dithered):
    """prepare_scratch (run by the pipeline while the first frame is read) makes the shear
    passes' work arrays large enough for dithers of a few degrees: none is made again."""
    from napari_nsg.core.registration import separable
    from napari_nsg.core.registration.frames import prepare_scratch

    d = dithered
    release_scratch()
    prepare_scratch(SHAPE)
    kept = {k: id(v) for k, v in separable._SCRATCH.__dict__.items()}
    assert set(kept) == {"a", "b"}
    for k in range(1, len(d.frames)):  # up to 3 degrees, and the flip
        resample(d.frames[k], WideTransform(homography=_truth_homography(d, k)), SHAPE)
    assert {k: id(v) for k, v in separable._SCRATCH.__dict__.items()} == kept
    release_scratch()
    assert not separable._SCRATCH.__dict__


def _through_three_passes(monkeypatch):
    """Resample shift plans through the three shear passes (zero shears) instead of the one
    separable filter."""
    from napari_nsg.core.registration import separable

    monkeypatch.setattr(separable.ShearPlan, "is_shift", property(lambda self: False))


def test_shift_plans_filter_once_with_the_values_of_the_passes(dithered, monkeypatch):
    """A map without rotation (a shift, alone or after a 180 degree turn) is applied by one
    separable filter and a crop: the values, floor, no-data pixels and coverage of the three
    shear passes; a rotation of 0.01 degrees is not a shift (0.06 px at the corners)."""
    from napari_nsg.core.registration.separable import shear_plan

    h, w = SHAPE
    frame = dithered.frames[2].copy()
    frame[100:110, 200:260] = 0.0  # a no-data block
    maps = {"shift": [[1.0, 0, 12.37], [0, 1, -7.81]],
            "turn and shift": [[-1.0, 0, w - 1 + 3.3], [0, -1, h - 1 - 2.6]]}
    for name, m in maps.items():
        hom = np.vstack([m, [0, 0, 1]])
        plan = shear_plan(hom, SHAPE, SHAPE)
        assert plan.is_shift and plan.quarter == (2 if name != "shift" else 0)
        for method in ("lanczos-clamped", "lanczos"):
            one, cov_one = resample(frame, WideTransform(homography=hom), SHAPE, method=method)
            with monkeypatch.context() as mp:
                _through_three_passes(mp)
                three, cov_three = resample(frame, WideTransform(homography=hom), SHAPE,
                                            method=method)
            assert cov_one == cov_three
            # measured: equal within 4e-7 of the value (the order of the sums): the same zeros
            # (no data) but for values of 1e-16 by the no-data block (the sky is near 0 here)
            differ = (one == 0) != (three == 0)
            assert np.abs(one[differ]).max(initial=0) < 1e-6
            assert np.abs(three[differ]).max(initial=0) < 1e-6
            np.testing.assert_allclose(one, three, rtol=1e-5, atol=1e-3)
    a = np.deg2rad(0.01)
    rot = np.array([[np.cos(a), -np.sin(a), 3.0], [np.sin(a), np.cos(a), 2.0], [0, 0, 1]])
    assert not shear_plan(rot, SHAPE, SHAPE).is_shift


# --- the quick star side of big frames (frame_stars, frame_match) ---------------------------

def _nearest_truth(d, k, xy):
    """Distance from each position to the nearest true star of frame ``k``, and its index."""
    from scipy.spatial import cKDTree

    return cKDTree(d.reference_to_frame(k, d.star_xy)).query(xy)


def test_bright_stars_are_measured_at_full_resolution(dithered):
    from napari_nsg.core.registration.frame_stars import bright_stars

    d = dithered
    stars = bright_stars(d.frames[1], 40, factor=4)
    assert len(stars) == 40 and np.all(np.diff(stars.flux) <= 0)
    dist, j = _nearest_truth(d, 1, stars.xy)
    # measured: the 10 brightest within 0.04 px of the truth, median 0.046 px (sky 800 ADU)
    assert dist[:10].max() < 0.05 and np.median(dist) < 0.06
    # as precise as sep's stars re-measured by the windowed centroids (the same window rule)
    sep_stars = detect_reference_stars(d.frames[1])
    sep_dist, sep_j = _nearest_truth(d, 1, windowed_centroids(
        d.frames[1], sep_stars.xy, np.median(sep_stars.fwhm)))
    common = np.isin(j, sep_j)
    assert common.sum() >= 30
    same = {star: k for k, star in enumerate(sep_j)}
    theirs = np.array([sep_dist[same[star]] for star in j[common]])
    assert np.median(dist[common]) < 1.1 * np.median(theirs) + 0.002
    # FWHM from the area above half the peak: the simulator's 3 px
    assert abs(np.median(stars.fwhm) - 3.0) < 0.5
    assert not stars.saturated.any()


def test_bright_stars_saturation_and_no_data(dithered):
    from napari_nsg.core.registration.frame_stars import EDGE, bright_stars

    d = dithered
    frame = d.frames[2].copy()
    level = float(np.percentile(frame, 99.99))
    frame = np.minimum(frame, level)  # the brightest stars clipped flat
    frame[:, :60] = 0.0  # a no-data band (a registration border)
    frame[200:240, 300:340] = np.nan
    stars = bright_stars(frame, 40, factor=4)
    assert len(stars) >= 30
    clipped = stars.raw_peak >= level - 1e-3
    assert clipped.sum() >= 3 and np.array_equal(stars.saturated, stars.raw_peak >= 0.9 * level)
    margin = EDGE * 4 - 4  # EDGE binned px, less the centroid's reach within a binned pixel
    assert stars.x.min() >= 60 + margin
    near_nan = (np.abs(stars.x - 319.5) < 20 + margin) & (np.abs(stars.y - 219.5) < 20 + margin)
    assert not near_nan.any()
    dist, _ = _nearest_truth(d, 2, stars.xy[~stars.saturated])
    assert np.median(dist) < 0.08


def test_bright_stars_leave_hot_pixels_out(dithered):
    from scipy.spatial import cKDTree

    from napari_nsg.core.registration.frame_stars import bright_stars

    d = dithered
    frame = d.frames[1].copy()
    rng = np.random.default_rng(0)
    hy, hx = rng.integers(10, 390, 60), rng.integers(10, 490, 60)
    frame[hy, hx] += 30000.0  # brighter in the 4x4 binning than most stars
    stars = bright_stars(frame, 40, factor=4)
    clean = bright_stars(d.frames[1], 40, factor=4)
    assert len(stars) == 40
    # measured: 36 of the 40 are the clean frame's (2 stars carry a hot pixel)
    same = cKDTree(clean.xy).query(stars.xy)[0] < 0.05
    assert same.sum() >= 34
    dist, _ = _nearest_truth(d, 1, stars.xy)
    assert np.mean(dist < 0.5) >= 0.9


def test_quick_path_of_big_frames_recovers_the_dithers(dithered, monkeypatch):
    """The 4x4-binned search of frames above BIN_ABOVE_PIXELS (here all), the flip included."""
    from napari_nsg.core.registration import frames

    monkeypatch.setattr(frames, "BIN_ABOVE_PIXELS", 10_000)
    monkeypatch.setattr(frames, "MAX_FRAME_STARS", 100)
    d = dithered
    stars = detect_reference_stars(d.frames[0])
    at = _stars_inside(d)
    for k in range(1, len(d.frames)):
        reg = register_frame(d.frames[0], d.frames[k], model="similarity", reference_stars=stars)
        err = reg.transform(at) - d.reference_to_frame(k, at)
        rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
        # measured: 0.004-0.022 px from 32-37 pairs (sep's stars, as small frames: 0.004-0.021)
        assert rms < 0.05, (k, rms)
        assert reg.n_stars <= 100 and reg.n_pairs >= 25
        angle = (d.angle_deg[k] + 180) % 360 - 180
        assert abs(((reg.rotation_deg - angle) + 180) % 360 - 180) < 0.05


def test_quick_match_agrees_with_the_full_search(dithered, monkeypatch):
    """The quick search (kept reference centroids, 20 x 40 stars) finds the map of the full
    search (solve_registration); when it fails, the full search registers the frame."""
    from napari_nsg.core.registration import frame_match, frames

    d = dithered
    stars = detect_reference_stars(d.frames[0])
    quick = [register_frame(d.frames[0], d.frames[k], reference_stars=stars) for k in (1, 5)]
    monkeypatch.setattr(frames, "match_frame", lambda *a, **k: None)
    full = [register_frame(d.frames[0], d.frames[k], reference_stars=stars) for k in (1, 5)]
    at = _stars_inside(d)
    for q, f in zip(quick, full, strict=True):
        assert q.n_pairs == f.n_pairs
        np.testing.assert_allclose(q.transform(at), f.transform(at), atol=0.01)
    # the reference's centroids are made once for its stars and kept
    a = frame_match.reference_index(d.frames[0], stars)
    assert frame_match.reference_index(d.frames[0], stars) is a
    assert frame_match.reference_index(d.frames[0].copy(), stars) is not a


def test_results_reuse_their_memory_only_once_dropped(dithered):
    """The passes' results come from arrays kept for reuse: one is handed out again only when
    nothing references it (nor a view of it) any more."""
    d = dithered
    release_scratch()
    t = WideTransform(homography=_truth_homography(d, 1))
    first, _ = resample(d.frames[1], t, SHAPE)
    kept = first.copy()
    address = first.__array_interface__["data"][0]
    row = first[7]  # a view keeps the buffer
    del first
    second, _ = resample(d.frames[2], WideTransform(homography=_truth_homography(d, 2)), SHAPE)
    assert second.__array_interface__["data"][0] != address
    np.testing.assert_array_equal(row, kept[7])
    del row, second
    again, _ = resample(d.frames[1], t, SHAPE)
    assert again.__array_interface__["data"][0] == address  # dropped: its memory again
    np.testing.assert_array_equal(again, kept)
    release_scratch()


def test_bright_stars_of_a_colour_frame_without_its_intensity(dithered, monkeypatch):
    """A colour frame is searched and measured on the mean of its channels' binnings and
    stamps: the stars of its intensity image, and the frame registers by the quick path."""
    from napari_nsg.core.registration import frames
    from napari_nsg.core.registration.frame_stars import bright_stars
    from napari_nsg.core.stars import intensity

    d = dithered
    colour = np.stack([0.7 * d.frames[1], d.frames[1], 1.2 * d.frames[1] + 30.0])
    stars = bright_stars(colour, 40, factor=4)
    mono = bright_stars(intensity(colour), 40, factor=4)
    assert len(stars) == len(mono) == 40
    np.testing.assert_allclose(stars.xy, mono.xy, atol=1e-4)
    np.testing.assert_allclose(stars.flux, mono.flux, rtol=1e-4)
    monkeypatch.setattr(frames, "BIN_ABOVE_PIXELS", 10_000)
    monkeypatch.setattr(frames, "MAX_FRAME_STARS", 100)
    reg = register_frame(d.frames[0], colour, model="similarity",
                         reference_stars=detect_reference_stars(d.frames[0]))
    at = _stars_inside(d)
    err = reg.transform(at) - d.reference_to_frame(1, at)
    assert float(np.sqrt(np.mean(np.sum(err**2, axis=1)))) < 0.05


def test_quick_path_of_undersampled_stars(monkeypatch):
    """Stars of FWHM 1.5 px: the centroid window is kept from 2.5 px (narrower, the centroids
    lean towards pixel centres: 0.025 px median error of the map instead of 0.009)."""
    from napari_nsg.core.registration import frames

    d = simulate_dithered(6, SHAPE, seed=3, max_shift=30.0, max_angle=3.0, flip_frame=FLIPPED,
                          fwhm=1.5)
    stars = detect_reference_stars(d.frames[0])
    at = _stars_inside(d)

    def errors():
        out = []
        for k in range(1, len(d.frames)):
            reg = register_frame(d.frames[0], d.frames[k], model="similarity",
                                 reference_stars=stars)
            err = reg.transform(at) - d.reference_to_frame(k, at)
            out.append(float(np.sqrt(np.mean(np.sum(err**2, axis=1)))))
        return np.array(out)

    sep_path = errors()
    monkeypatch.setattr(frames, "BIN_ABOVE_PIXELS", 10_000)
    monkeypatch.setattr(frames, "MAX_FRAME_STARS", 100)
    quick = errors()
    # measured: quick 0.004-0.012 px (median 0.009), sep's stars 0.004-0.013 (0.011)
    assert quick.max() < 0.03 and np.median(quick) < 0.015
    assert np.median(quick) < 1.2 * np.median(sep_path)


def test_prepared_result_arrays_serve_the_first_frames(dithered):
    """prepare_scratch also makes (and touches) the first two frames' result arrays: a
    pipeline's first frames write into memory made while the first frame was read."""
    from napari_nsg.core.registration import separable
    from napari_nsg.core.registration.frames import prepare_scratch

    d = dithered
    release_scratch()
    prepare_scratch(SHAPE)
    made = {buf.__array_interface__["data"][0] for buf in separable._OUTPUTS.pool}
    assert len(made) == 2
    results = [resample(d.frames[k], WideTransform(homography=_truth_homography(d, k)),
                        SHAPE)[0] for k in (1, 2)]
    assert {r.__array_interface__["data"][0] for r in results} == made
    assert not np.shares_memory(results[0], results[1])
    release_scratch()
