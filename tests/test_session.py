"""The interactive NSG session, headless (no Qt): the numbers of ``normalize``,
recomputation of only the invalidated stages, cancel, metrics and the
recommended reference, and consistent intermediates for the viewer."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgError, NsgParameterError, NsgParameters
from napari_nsg.io import read_frame
from napari_nsg.pipeline.normalize import normalize_frames
from napari_nsg.pipeline.progress import Cancelled
from napari_nsg.pipeline.session import STAGE_OF, STAGES, NsgSession
from napari_nsg.synthetic import simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))
TRANSMISSION = [1.0, 0.8, 0.9, 0.65]
METRIC_KEYS = {"name", "date_obs", "exposure", "altitude", "airmass", "background",
               "gradient_diag1", "gradient_diag2", "gradient_span", "lumpy", "noise", "n_stars",
               "fwhm", "weight", "transmission", "rank", "error"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    seq = simulate_sequence(len(TRANSMISSION), (320, 384), seed=21, transmission=TRANSMISSION,
                            border=10, **FIELD)
    folder = tmp_path_factory.mktemp("session_frames")
    return seq, seq.write(folder)


@pytest.fixture(scope="module")
def session(files):
    _, paths = files
    s = NsgSession()
    assert s.add_files(paths) == []
    s.measure()
    s.set_reference(paths[0].name)
    return s


@pytest.fixture(scope="module")
def cli_run(files, tmp_path_factory):
    _, paths = files
    out = tmp_path_factory.mktemp("session_cli")
    return out, normalize_frames(paths, paths[0], out, NsgParameters())


def test_run_gives_the_numbers_and_pixels_of_normalize(files, session, cli_run):
    _, paths = files
    out, report = cli_run
    rows = session.run_all()
    assert [r["name"] for r in rows] == [p.name for p in paths]
    for mine, theirs in zip(rows, report.rows):
        assert mine["error"] is None and theirs.error is None
        np.testing.assert_array_equal(mine["scale"], theirs.scale)
        assert mine["weight"] == theirs.weight
        assert mine["relative_weight"] == theirs.relative_weight
        assert mine["n_samples"] == theirs.n_samples
        assert mine["rejected"] == theirs.rejected
        written = read_frame(theirs.output).data
        images = session.result_images(mine["name"])
        np.testing.assert_array_equal(images["corrected"], written)
    # the preview goes through the same stages: the same corrected pixels
    name = paths[2].name
    preview = session.preview(name)
    np.testing.assert_array_equal(preview.corrected, read_frame(report.rows[2].output).data)
    assert preview.weight == report.rows[2].weight


def test_run_to_a_folder_is_normalize_itself(files, session, cli_run, tmp_path):
    _, paths = files
    out, report = cli_run
    rows = session.run_all(out_dir=tmp_path, gradient_images=True)
    for mine, theirs in zip(rows, report.rows):
        assert mine["scale"] == theirs.scale
    gradient = read_frame(tmp_path / f"{paths[1].stem}_gradient.fits").data
    np.testing.assert_array_equal(session.result_images(paths[1].name)["gradient"], gradient)


def test_smoothness_change_refits_only_the_spline(files, session):
    seq, paths = files
    name = paths[1].name
    before = session.preview(name)
    gradient = before.gradient().copy()
    counts = dict(session.computed)
    assert session.update_params(smoothness=0.5) == {"spline", "correction"}
    after = session.preview(name)
    done = {k: session.computed[k] - counts.get(k, 0) for k in STAGES}
    assert done == {"reference": 0, "scale": 0, "samples": 0, "spline": 1, "correction": 1}
    valid = seq.frame(1).valid
    span = float(np.ptp(gradient[valid]))
    assert np.max(np.abs(after.gradient() - gradient)[valid]) > 0.01 * span
    # the same as a session that started with that smoothness
    fresh = NsgSession(NsgParameters(smoothness=0.5))
    fresh.add_files(paths[:2])
    fresh.set_reference(paths[0].name)
    np.testing.assert_allclose(after.gradient(), fresh.preview(name).gradient(), atol=1e-4 * span)
    # back to the default: the fit of that value is remembered, nothing is recomputed
    counts = dict(session.computed)
    session.update_params(smoothness=-2.0)
    np.testing.assert_array_equal(session.preview(name).gradient(), gradient)
    assert session.computed["spline"] == counts["spline"]
    assert session.computed["correction"] == counts["correction"] + 1


def test_every_parameter_has_a_stage_and_star_settings_redo_the_reference(files, session):
    assert set(STAGE_OF) == set(NsgParameters.__dataclass_fields__)
    _, paths = files
    name = paths[1].name
    session.preview(name)
    n_ref = session.computed["reference"]
    assert session.update_params(outlier_removal=5.0) == {"scale", "samples", "spline",
                                                          "correction"}
    assert session.update_params(min_weight=0.5) == {"rejection"}
    assert session.update_params(detection_threshold=6.0) == set(STAGES)
    session.preview(name)
    assert session.computed["reference"] == n_ref + 1
    with pytest.raises(NsgParameterError, match="smoothness"):
        session.update_params(smoothness=9.0)
    assert session.params.smoothness == -2.0
    session.update_params(outlier_removal=2.0, min_weight=0.25, detection_threshold=5.0)


def test_cancelled_run_leaves_no_file(files, tmp_path):
    _, paths = files
    s = NsgSession()
    s.add_files(paths)
    s.set_reference(paths[0].name)
    cancel = threading.Event()

    def progress(done, total, message):
        if done >= 1:  # after the first frame is written
            cancel.set()

    with pytest.raises(Cancelled):
        s.run_all(out_dir=tmp_path, progress=progress, cancel=cancel)
    images = sorted(p.name for p in tmp_path.glob("*.fits"))
    assert images == [f"{paths[0].stem}_nsg.fits"]  # the finished frame, whole
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # cancelled before the first frame: no image at all
    other = tmp_path / "other"
    cancel.set()
    with pytest.raises(Cancelled):
        s.run_all(out_dir=other, cancel=cancel)
    assert not list(other.glob("*.fits")) and not [p for p in other.iterdir()
                                                  if ".partial-" in p.name]
    with pytest.raises(Cancelled):  # in memory too
        s.run_all(cancel=cancel)


def test_metrics_table_and_recommendation(files, session):
    seq, paths = files
    rows = session.metrics_table()
    assert [r["name"] for r in rows] == [p.name for p in paths]
    assert all(METRIC_KEYS <= set(r) for r in rows)
    by_name = {r["name"]: r for r in rows}
    true_t = np.asarray(seq.transmission)[:, 0]
    for p, t in zip(paths, true_t):
        assert by_name[p.name]["transmission"] == pytest.approx(t / true_t.max(), rel=0.02)
    name, why = session.recommended()
    assert by_name[name]["recommended"] and name in why
    # the clouded frame (transmission 0.65) is never the reference
    assert name != paths[3].name
    boxes = session.corner_boxes(name)
    assert len(boxes) == 4 and all(0 <= y0 < y1 <= 320 and 0 <= x0 < x1 <= 384
                                   for y0, x0, y1, x1 in boxes)
    blink = session.blink_image(paths[3].name)
    ref_blink = session.blink_image(paths[0].name)
    # one stretch fits all: the backgrounds agree to a few noise sigmas
    sigma = by_name[paths[0].name]["noise"]
    assert abs(np.median(blink[seq.frame(3).valid]) - np.median(ref_blink)) < 3 * sigma


def test_preview_intermediates_are_consistent(files, session):
    _, paths = files
    p = session.preview(paths[1].name)
    assert p.stars["used"].sum() == p.n_star_pairs[0] >= 20
    assert np.all((p.stars["reason"] == "") == p.stars["used"])
    assert p.stars["ref_flux"].shape == (1, len(p.stars["x"]))
    assert p.samples["kept"].sum() == p.n_samples
    assert p.samples["value"].shape == (1, len(p.samples["x"]))
    assert len(p.nodes["x"]) == p.n_nodes
    assert len(p.rejection_circles["radius"]) > 0
    # the samples are target*scale - reference, which the gradient model follows
    kept = p.samples["kept"]
    x, y = p.samples["x"][kept].astype(int), p.samples["y"][kept].astype(int)
    model_at = p.gradient()[y, x]
    resid = p.samples["value"][0, kept] - model_at
    assert np.std(resid) < 0.2 * np.std(p.samples["value"][0, kept])
    prof = p.profile("row", int(np.median(y)))
    assert len(prof["coord"]) == 384 and len(prof["samples_coord"]) > 3
    np.testing.assert_array_equal(prof["model"], p.gradient()[int(np.median(y))])
    scaled = p.uncorrected_scaled
    ok = scaled != 0
    np.testing.assert_allclose((scaled - p.gradient())[ok], p.corrected[ok], rtol=1e-5,
                               atol=1e-3)
    assert np.ptp(p.curvature()) < np.ptp(p.gradient())


def test_bad_files_layers_and_removal(files, tmp_path):
    seq, paths = files
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a FITS file")
    s = NsgSession()
    errors = s.add_files([paths[0], bad])
    assert len(errors) == 1 and "bad.fits" in str(errors[0])
    frame = seq.frame(1)
    name = s.add_array("layer", frame.data, frame.header)
    assert name == "layer" and s.add_array("layer", frame.data) == "layer (2)"
    assert [f.name for f in s.frames] == [paths[0].name, "layer", "layer (2)"]
    s.set_reference(paths[0].name)
    assert s.preview("layer").scale[0] == pytest.approx(1 / 0.8, rel=0.01)
    with pytest.raises(NsgError, match="saved to a file"):
        s.run_all(out_dir=tmp_path / "out")
    blank = s.add_array("blank", np.zeros_like(frame.data))
    with pytest.raises(NsgError, match="blank cannot serve as the reference: .*no data"):
        s.set_reference(blank)
    assert s.reference is None
    s.set_reference(paths[0].name)
    s.remove(paths[0].name)
    assert s.reference is None
    with pytest.raises(NsgError, match="no reference"):
        s.preview("layer")
    with pytest.raises(NsgError, match="no frame named"):
        s.preview("missing")


def test_results_table_recomputes_rejection_only(session):
    rows = session.run_all()
    strict = session.results_table(min_weight=0.95)
    assert [r["rejected"] for r in strict] == [False] + [True] * (len(rows) - 1)
    assert all("relative weight" in r["reject_reason"] for r in strict[1:])
    loose = session.results_table(min_weight=0.0, min_transmission=0.0)
    assert not any(r["rejected"] for r in loose)
    assert [r["weight"] for r in loose] == [r["weight"] for r in rows]


def test_preview_of_the_reference_itself(files, session):
    _, paths = files
    p = session.preview(paths[0].name)
    assert p.scale[0] == 1.0 and not np.any(p.gradient())
    assert len(p.stars["x"]) == 0 and p.stars["ref_flux"].shape == (1, 0)
    assert p.samples["kept"].sum() > 0 and np.allclose(p.samples["value"][0, p.samples["kept"]], 0)
    np.testing.assert_array_equal(p.corrected, np.where(np.isfinite(p.target), p.target, 0))


@pytest.mark.real
@pytest.mark.slow
def test_real_frames_preview_and_run_match_normalize(real_data, tmp_path):
    paths = sorted((real_data / "wasp12b_calibrated").glob("*.fits"))[:4]
    s = NsgSession()
    assert s.add_files(paths) == []
    s.measure()
    name, why = s.recommended()
    assert name in why
    s.set_reference(paths[0].name)
    p = s.preview(paths[2].name)
    assert p.stars["used"].sum() == p.n_star_pairs[0] >= 10
    assert p.samples["kept"].sum() == p.n_samples
    report = normalize_frames(paths, paths[0], tmp_path, NsgParameters())
    rows = s.run_all()
    for mine, theirs in zip(rows, report.rows):
        assert mine["scale"] == theirs.scale and mine["weight"] == theirs.weight
    written = read_frame(report.rows[2].output).data
    np.testing.assert_allclose(p.corrected, written, rtol=1e-6, atol=1e-3)


def test_colour_frames_per_channel(tmp_path):
    seq = simulate_sequence(2, (256, 320), seed=8, channels=3, transmission=[1.0, 0.85],
                            **FIELD)
    paths = seq.write(tmp_path)
    s = NsgSession()
    s.add_files(paths)
    s.set_reference(paths[0].name)
    p = s.preview(paths[1].name)
    truth = np.asarray(seq.transmission)
    np.testing.assert_allclose(p.transmission, truth[1] / truth[0], rtol=0.01)
    assert p.corrected.shape == p.gradient().shape == p.curvature().shape == (3, 256, 320)
    n = len(p.stars["x"])
    assert p.stars["ref_flux"].shape == (3, n) and p.stars["used_per_channel"].shape == (3, n)
    np.testing.assert_array_equal(p.stars["used_per_channel"].sum(axis=1), p.n_star_pairs)
    assert p.samples["value"].shape[0] == 3 and p.nodes["value"].shape == (3, p.n_nodes)
    prof = p.profile("column", 100, channel=2)
    np.testing.assert_array_equal(prof["model"], p.gradient()[2][:, 100])
    rows = s.run_all()
    assert len(rows[1]["scale"]) == 3
    assert s.result_images(paths[1].name)["corrected"].shape == (3, 256, 320)


def test_photometry_change_redoes_the_scale_as_normalize_does(files, tmp_path):
    """The workbench's photometry choice (the CLI's --photometry): switching from the
    default 'psf' to 'aperture' invalidates the scale and what follows, not the reference,
    and the preview's scale is then normalize's with photometry='aperture' (which differs
    from the PSF weights')."""
    _, paths = files
    s = NsgSession()
    s.add_files(paths[:2])
    s.set_reference(paths[0].name)
    assert s.params.photometry == "psf"
    psf = s.preview(paths[1].name).scale
    assert s.update_params(photometry="aperture") == {"scale", "samples", "spline", "correction"}
    aperture = s.preview(paths[1].name).scale
    report = normalize_frames(paths[:2], paths[0], tmp_path, NsgParameters(photometry="aperture"))
    np.testing.assert_array_equal(aperture, report.rows[1].scale)
    assert not np.array_equal(psf, aperture)
