"""Stacking: rejection of trails and hot pixels, no bias, noise, chunking, executors, NSG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.core.stack import Rejection, auto_rejection, integrate
from napari_nsg.io import FrameError
from napari_nsg.pipeline.stack import EXTENSIONS, stack_frames
from napari_nsg.synthetic.psf import PSF, render_stars

SKY = 1000.0
SIGMA = 10.0
SHAPE = (120, 160)
TRAIL_ROW = 40
HOT = [(2, 10, 20), (5, 70, 100), (7, 100, 150)]  # (frame, y, x)


def _truth(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 40
    stars = render_stars(SHAPE, rng.uniform(5, SHAPE[1] - 5, n), rng.uniform(5, SHAPE[0] - 5, n),
                         rng.uniform(500, 20000, n), PSF(3.0))
    return (stars + SKY).astype(np.float64)


def _frames(n: int, seed: int = 1, defects: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy frames of one truth; frame 1 has a satellite trail, three have hot pixels."""
    truth = _truth()
    rng = np.random.default_rng(seed)
    frames = truth + rng.normal(0, SIGMA, (n, *SHAPE))
    if defects:
        frames[1, TRAIL_ROW - 1:TRAIL_ROW + 2, :] += 400.0  # 40 sigma, 3 px wide
        for k, y, x in HOT:
            if k < n:
                frames[k, y, x] += 20000.0
    return frames, truth


@pytest.mark.parametrize("n, method", [(5, "percentile"), (10, "sigma"), (15, "winsorized"),
                                       (25, "linear-fit")])
def test_trail_and_hot_pixels_are_rejected(n, method):
    frames, truth = _frames(n)
    assert auto_rejection(n) == method
    res = integrate(frames, None, Rejection.resolve("auto", n))
    stack_sigma = SIGMA / np.sqrt(n)
    trail = (res.stack - truth)[TRAIL_ROW - 1:TRAIL_ROW + 2]
    # measured (n = 5/10/15/25): max |residual| on the trail 3.8/3.1/4.4/3.7 stack sigma
    # (without rejection 21/15/13/11)
    assert np.abs(trail).max() < 5 * stack_sigma
    for k, y, x in HOT:
        if k < n:
            assert abs(res.stack[y, x] - truth[y, x]) < 5 * stack_sigma
            assert res.n_high[y, x] >= 1
    plain = integrate(frames).stack
    assert np.abs(plain - truth)[TRAIL_ROW].max() > 10 * stack_sigma  # the defects are real


@pytest.mark.parametrize("n", [5, 10, 15, 25])
def test_no_bias_and_noise_near_ideal(n):
    frames, truth = _frames(n, seed=3, defects=False)
    res = integrate(frames, None, Rejection.resolve("auto", n))
    resid = res.stack - truth
    stack_sigma = SIGMA / np.sqrt(n)
    # measured (n = 5/10/15/25): bias +0.001/-0.020/-0.152/-0.176 stack sigma (the
    # asymmetric thresholds clip more of the high tail), noise 1.006/1.013/1.092/1.065x ideal
    assert abs(resid.mean()) < 0.2 * stack_sigma
    assert resid.std() < 1.3 * stack_sigma
    quiet = (res.n_low == 0) & (res.n_high == 0)
    assert quiet.mean() > 0.6  # measured 1.00/0.97/0.78/0.65
    # where nothing is rejected the stack is exactly the mean
    np.testing.assert_allclose(res.stack[quiet], frames.mean(axis=0)[quiet], rtol=1e-6)


def test_auto_thresholds_follow_nsg():
    assert [auto_rejection(n) for n in (1, 2, 3, 7, 8, 10, 11, 19, 20, 50)] == [
        "none", "none", "percentile", "percentile", "sigma", "sigma", "winsorized",
        "winsorized", "linear-fit", "linear-fit"]
    with pytest.raises(ValueError, match="unknown rejection"):
        Rejection.resolve("esd", 10)


def test_weights_no_data_and_colour():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 1, (4, 3, 6, 7))
    w = np.array([1.0, 2.0, 0.5, 0.0])
    res = integrate(x, w)
    np.testing.assert_allclose(res.stack, np.average(x, axis=0, weights=w), rtol=1e-6)
    assert (res.n_used == 3).all()  # the zero weight drops frame 3
    x[1, :, :, :3] = 0.0  # a no-data border in frame 1
    x[2, 1, 2, 4] = np.nan
    res = integrate(x, np.ones(4))
    expected = np.nanmean(np.where(x == 0, np.nan, x), axis=0)
    np.testing.assert_allclose(res.stack, expected, rtol=1e-6)
    assert res.n_used[0, 0, 0] == 3 and res.n_used[1, 2, 4] == 3 and res.n_used[0, 0, 5] == 4
    # per channel: a defect in one channel is rejected in that channel only
    y = rng.normal(100, 1, (10, 3, 5, 5))
    y[4, 1, 2, 2] += 1000
    r = integrate(y, None, Rejection.resolve("sigma", 10))
    assert r.n_high[1, 2, 2] == 1 and r.n_high[0, 2, 2] == 0 and r.n_high[2, 2, 2] == 0
    empty = integrate(np.zeros((3, 2, 2)))
    assert (empty.stack == 0).all() and (empty.n_used == 0).all()


def _write(tmp_path, frames, weights=None):
    paths = []
    for k, f in enumerate(frames):
        h = fits.Header()
        if weights is not None:
            h["NWEIGHT"] = weights[k]
        p = tmp_path / f"f{k:02d}.fits"
        # int16 + BZERO for some frames: the row reader applies the scaling
        if k % 2:
            hdu = fits.PrimaryHDU(np.round(f).astype(np.float32), header=h)
        else:
            hdu = fits.PrimaryHDU(header=h)
            hdu.data = np.round(f).astype(np.uint16)
        hdu.writeto(p)
        paths.append(p)
    return paths


def test_pipeline_chunks_equal_one_block(tmp_path):
    frames, _ = _frames(9)
    w = np.linspace(0.5, 1.5, 9)
    paths = _write(tmp_path, frames, w)
    whole = stack_frames(paths, tmp_path / "a.fits", rejection="sigma", chunk_rows=SHAPE[0])
    small = stack_frames(paths, tmp_path / "b.fits", rejection="sigma", chunk_rows=7)
    assert small.chunk_rows == 7 and whole.chunk_rows == SHAPE[0]
    np.testing.assert_array_equal(whole.stack, small.stack)
    np.testing.assert_array_equal(whole.n_high, small.n_high)
    direct = integrate(np.round(frames).astype(np.float32), w, Rejection.resolve("sigma", 9))
    np.testing.assert_allclose(whole.stack, direct.stack, rtol=1e-6)
    with fits.open(tmp_path / "a.fits") as hdul:
        assert [h.name for h in hdul[1:]] == list(EXTENSIONS)
        assert hdul[0].data.dtype.kind == "f" and hdul[0].header["NSTACK"] == 9
        np.testing.assert_array_equal(hdul["NFRAMES"].data, whole.n_used)
        assert any("STACK.rejection = sigma" in str(c) for c in hdul[0].header["HISTORY"])


@pytest.mark.slow
def test_workers_and_dask_equal_serial(tmp_path):
    frames, _ = _frames(8)
    paths = _write(tmp_path, frames, np.ones(8))
    serial = stack_frames(paths, None, chunk_rows=16)
    pool = stack_frames(paths, None, chunk_rows=16, workers=2)
    np.testing.assert_array_equal(serial.stack, pool.stack)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        dask = stack_frames(paths, None, chunk_rows=16, scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(serial.stack, dask.stack)
    np.testing.assert_array_equal(serial.n_low, dask.n_low)


@pytest.mark.slow
def test_nsg_normalized_stack_is_flatter_than_global_scale_offset(tmp_path):
    from napari_nsg.io import read_frame
    from napari_nsg.pipeline.normalize import normalize_frames
    from napari_nsg.synthetic import simulate_sequence

    n = 6
    seq = simulate_sequence(n, (256, 256), seed=5, gradient=[3.0, 60, 80, 50, 70, 90],
                            star_density=3e-3)
    paths = seq.write(tmp_path / "in")
    nsg = normalize_frames(paths, paths[0], tmp_path / "nsg")
    nsg_stack = stack_frames([r.output for r in nsg.rows], None, rejection="sigma").stack
    # global: true scale, and an offset matching each frame's median to the reference's
    ref_median = np.median(read_frame(paths[0]).data)
    glob = []
    for k, p in enumerate(paths):
        d = read_frame(p).data * seq.scale[k, 0]
        glob.append(d - np.median(d) + ref_median)
    glob_stack = integrate(np.stack(glob), None, Rejection.resolve("sigma", n)).stack

    def spread(img):  # range of 32x32 block medians of the background left after the signal
        resid = img - seq.signal(0)
        blocks = resid.reshape(8, 32, 8, 32).transpose(0, 2, 1, 3).reshape(64, -1)
        med = np.median(blocks, axis=1)
        return med.max() - med.min()

    # measured: block-median spread 7.9 ADU (NSG) against 53.6 ADU (global); the reference's
    # own background spans 2.5 ADU
    assert spread(nsg_stack) < 0.5 * spread(glob_stack)


def test_pipeline_errors(tmp_path):
    frames, _ = _frames(4)
    paths = _write(tmp_path, frames)  # no NWEIGHT
    from napari_nsg.io import FrameError, OutputExistsError

    with pytest.raises(FrameError, match="NWEIGHT"):
        stack_frames(paths, tmp_path / "s.fits")
    odd = tmp_path / "odd.fits"
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(odd)
    res = stack_frames([*paths, odd, tmp_path / "missing.fits"], tmp_path / "s.fits",
                       weights=None)
    assert [r["error"] is None for r in res.rows] == [True] * 4 + [False, False]
    assert "shape" in res.rows[4]["error"] and "not found" in res.rows[5]["error"]
    with pytest.raises(OutputExistsError):
        stack_frames(paths, tmp_path / "s.fits", weights=None)
    with pytest.raises(FrameError, match="input"):
        stack_frames(paths, paths[0], weights=None, overwrite=True)


def test_compressed_and_colour_frames_read_like_plain_ones(tmp_path):
    rng = np.random.default_rng(4)
    # integers: tile compression of floats would quantize them
    cubes = [np.round(rng.normal(500, 5, (3, 20, 30))).astype(np.int16) for _ in range(4)]
    plain, packed = [], []
    for k, c in enumerate(cubes):
        p = tmp_path / f"c{k}.fits"
        fits.PrimaryHDU(c).writeto(p)
        plain.append(p)
        z = tmp_path / f"c{k}.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(c, compression_type="GZIP_1")]
                     ).writeto(z)
        packed.append(z)
    a = stack_frames(plain, None, weights=None, chunk_rows=6)
    b = stack_frames(packed, None, weights=None, chunk_rows=6)
    expected = integrate(np.stack(cubes).astype(np.float32), None, Rejection.resolve("auto", 4))
    np.testing.assert_array_equal(a.stack, expected.stack)
    np.testing.assert_array_equal(b.stack, expected.stack)
    assert a.stack.shape == (3, 20, 30) and a.n_used.shape == (3, 20, 30)


def test_clipped_zeros_are_values_and_zero_borders_are_not(tmp_path):
    """A raw frame's isolated clipped zeros are measured; a zero border band is no data,
    also when the band is cut by the chunks of rows."""
    rng = np.random.default_rng(3)
    frames = rng.normal(5.0, 3.0, (6, *SHAPE)).clip(0, None).round()  # dark sky clipped at 0
    zeros = frames == 0
    assert 0.03 < zeros.mean() < 0.1  # several per cent of the pixels are exactly 0
    frames[2, :, :12] = 0.0  # a registration border in frame 2
    valid = ~np.isnan(np.where(frames == 0, np.nan, frames))
    res = integrate(frames, None)
    assert (res.n_used[:, :12] == 5).all()  # the border is ignored
    inner = res.n_used[:, 16:]  # (clipped zeros touching the band join it)
    assert (inner == 6).all()  # every clipped zero counted as a value
    np.testing.assert_allclose(res.stack[:, 16:], frames[:, :, 16:].mean(axis=0), rtol=1e-6)
    assert valid[:, :, 16:].sum() < inner.sum()  # the old "0 = no data" rule would drop them
    paths = _write(tmp_path, frames)
    chunked = stack_frames(paths, None, rejection="none", weights=None, chunk_rows=5)
    np.testing.assert_array_equal(chunked.n_used, res.n_used)
    np.testing.assert_allclose(chunked.stack, res.stack, rtol=1e-6)


@pytest.fixture(scope="module")
def normalized_with_a_rejected_frame(tmp_path_factory):
    """``napari-nsg normalize`` outputs of five frames, the clouded frame 3 (T = 0.55)
    rejected by its transmission (its output written, the report says why)."""
    from napari_nsg.pipeline.normalize import normalize_frames
    from napari_nsg.synthetic import simulate_sequence

    root = tmp_path_factory.mktemp("rejected")
    seq = simulate_sequence(5, (200, 200), seed=2, transmission=[1.0, 0.9, 0.8, 0.55, 0.95],
                            star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))
    paths = seq.write(root / "in")
    result = normalize_frames(paths, paths[0], root / "nsg")
    rejected = [r.output for r in result.rows if r.rejected]
    assert [Path(p).name for p in rejected] == ["frame_003_nsg.fits"]
    return [Path(r.output) for r in result.rows], Path(rejected[0])


def test_frames_that_normalize_rejected_are_left_out(normalized_with_a_rejected_frame, tmp_path):
    outputs, rejected = normalized_with_a_rejected_frame
    kept = [p for p in outputs if p != rejected]
    res = stack_frames(outputs, tmp_path / "s.fits", rejection="none")
    row = next(r for r in res.rows if Path(r["file"]) == rejected)
    assert row["error"] is None and "rejected by normalize" in row["skipped"]
    assert "transmission" in row["skipped"]
    assert [Path(r["file"]) for r in res.stacked] == kept and not res.failed
    assert fits.getheader(tmp_path / "s.fits")["NSTACK"] == len(kept)
    # the same stack as the kept frames alone; with include_rejected, every frame
    alone = stack_frames(kept, None, rejection="none")
    np.testing.assert_array_equal(res.stack, alone.stack)
    everything = stack_frames(outputs, None, rejection="none", include_rejected=True)
    assert len(everything.stacked) == len(outputs) and not everything.skipped
    assert not np.array_equal(everything.stack, res.stack)
    # only rejected frames: an error that says how to stack them anyway
    with pytest.raises(FrameError, match="include-rejected"):
        stack_frames([rejected], None)


def test_stack_cli_skips_rejected_frames(normalized_with_a_rejected_frame, tmp_path, capsys):
    from napari_nsg.cli import main

    outputs, rejected = normalized_with_a_rejected_frame
    assert main(["stack", *map(str, outputs), "--out", str(tmp_path / "a.fits"), "--quiet"]) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if x.startswith(rejected.name))
    assert "skipped: rejected by normalize" in line
    assert (f"{len(outputs) - 1} of {len(outputs)} frame(s) stacked (1 left out: rejected by "
            "normalize") in captured.err
    assert main(["stack", *map(str, outputs), "--out", str(tmp_path / "b.fits"), "--quiet",
                 "--include-rejected"]) == 0
    assert fits.getheader(tmp_path / "b.fits")["NSTACK"] == len(outputs)


@pytest.mark.parametrize("border", [1, 2, 3])
def test_a_thin_border_is_no_data_whatever_the_chunk(tmp_path, border):
    """A registered frame's zero border of 1-3 px along a side is no data in every chunk
    of rows: each chunk is judged on its own, and at 4 rows a chunk such a strip (4-12 px)
    was below the border regions' 16 px and stacked as zeros (the edge columns came out at
    2/3 of the sky with 3 frames, NFRAMES 3)."""
    rng = np.random.default_rng(border)
    frames = [1000.0 + rng.normal(0, 5, SHAPE) for _ in range(3)]
    frames[1][:, :border] = 0.0
    frames[2][:, -border:] = 0.0
    paths = []
    for k, f in enumerate(frames):
        paths.append(tmp_path / f"f{k}.fits")
        fits.PrimaryHDU(f.astype(np.float32)).writeto(paths[-1])
    runs = [stack_frames(paths, None, rejection="none", weights=None, chunk_rows=rows)
            for rows in (4, SHAPE[0])]
    for res in runs:
        assert np.all(res.n_used[:, :border] == 2) and np.all(res.n_used[:, -border:] == 2)
        assert np.all(res.stack[:, :border] > 950)
    np.testing.assert_array_equal(runs[0].stack, runs[1].stack)


def test_the_stack_does_not_keep_the_first_frames_weight_and_scale(tmp_path):
    """The output header is the first frame's, less its NWEIGHT and NSG scale keywords: a
    stack of stacks would otherwise weigh this stack by its first frame's weight."""
    frames, _ = _frames(3)
    paths = _write(tmp_path, frames, [0.4, 1.0, 1.0])
    for k, p in enumerate(paths):
        with fits.open(p, mode="update") as hdul:
            hdul[0].header["NSGS0"] = 0.9 + 0.1 * k
            hdul[0].header["NSGSNR0"] = 30.0
            hdul[0].header["NSGREF"] = paths[0].name
    stack_frames(paths, tmp_path / "s.fits", rejection="none")
    header = fits.getheader(tmp_path / "s.fits")
    assert header["NSTACK"] == 3 and header["NSGREF"] == paths[0].name
    assert not any(k in header for k in ("NWEIGHT", "NSGS0", "NSGSNR0"))
