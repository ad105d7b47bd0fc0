"""The Stack widget in a real napari viewer: the NSG run's frames and files become a stack."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


def _normalized(viewer, qtbot):
    """The sample sub-frames, normalized in memory by the NSG widgets."""
    from napari_nsg._widgets.frames import FramesWidget
    from napari_nsg._widgets.normalize import NormalizeWidget

    viewer.open_sample("napari-nsg", "synthetic_subs")
    frames = FramesWidget(viewer)
    frames.add_open_layers()
    qtbot.waitUntil(lambda: not frames.busy, timeout=WAIT_MS)
    nw = NormalizeWidget(viewer, session=frames.session)
    frames.set_reference()
    qtbot.waitUntil(lambda: not frames.busy, timeout=WAIT_MS)
    nw.run_all()
    qtbot.waitUntil(lambda: nw.run_rows is not None and not nw.busy, timeout=WAIT_MS)
    return nw


def test_stack_widget_on_the_normalized_sample_frames(make_napari_viewer, qtbot, tmp_path,
                                                      monkeypatch):
    from napari_nsg._widgets.stack import LAYERS, StackWidget
    from napari_nsg.core.stack import Rejection, integrate

    monkeypatch.setattr("napari.utils.notifications.show_error", lambda msg: None)
    viewer = make_napari_viewer()
    w = StackWidget(viewer)
    w.stack()  # nothing normalized yet: a notification (also in the status line), no job
    assert not w.busy and "run the Normalize" in w.status.text()
    nw = _normalized(viewer, qtbot)
    w = StackWidget(viewer, normalize_widget=nw)
    w.rejection.setCurrentText("sigma")
    w.out_file.setText(str(tmp_path / "stack.fits"))
    w.stack()
    qtbot.waitUntil(lambda: w.result is not None and not w.busy, timeout=WAIT_MS)
    rows = [r for r in nw.session.results_table(**{
        k: v for k, v in nw.form.values().items() if k in ("min_weight", "min_transmission")})
        if not r.get("error") and not r["rejected"]]
    assert 2 <= len(rows) < len(nw.run_rows)  # the clouded frame is left out
    frames = np.stack([nw.session.result_images(r["name"])["corrected"] for r in rows])
    expected = integrate(frames, np.array([r["weight"] for r in rows]),
                         Rejection.resolve("sigma", len(rows)))
    for key, name in LAYERS.items():
        assert name in viewer.layers
        np.testing.assert_array_equal(viewer.layers[name].data, getattr(expected, key))
    assert viewer.layers[LAYERS["n_used"]].data.max() == len(rows)
    with fits.open(tmp_path / "stack.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, expected.stack)
        assert hdul["NFRAMES"].data.max() == len(rows)
    assert "frames stacked (sigma)" in w.status.text()
    # the stack is less noisy than any one normalized frame
    def noise(img):
        d = np.diff(img, axis=1)
        return 1.4826 * np.median(np.abs(d - np.median(d)))

    assert noise(expected.stack) < 0.8 * min(noise(f) for f in frames)
    # an existing output is kept unless asked
    w.stack()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert "output exists" in w.status.text()


def test_stack_widget_on_files(make_napari_viewer, qtbot, tmp_path):
    from napari_nsg._widgets.stack import LAYERS, SOURCE_FILES, StackWidget
    from napari_nsg.synthetic import write_sequence

    paths = write_sequence(tmp_path / "in", 3, (64, 80), seed=2, channels=3)
    w = StackWidget(make_napari_viewer())
    w.source.setCurrentText(SOURCE_FILES)
    w.weights.setCurrentText("none")
    w.files.setText(str(tmp_path / "in" / "*.fits"))
    w.stack()
    qtbot.waitUntil(lambda: w.result is not None and not w.busy, timeout=WAIT_MS)
    assert w.result.stack.shape == (3, 64, 80) and w.result.rejection.method == "percentile"
    assert f"{LAYERS['stack']} [R]" in w.viewer.layers
    assert len(w.result.rows) == len(paths)


def test_stack_widget_leaves_out_files_that_normalize_rejected(make_napari_viewer, qtbot,
                                                               tmp_path):
    from napari_nsg._widgets.stack import LAYERS, SOURCE_FILES, StackWidget
    from napari_nsg.pipeline.normalize import normalize_frames
    from napari_nsg.synthetic import simulate_sequence

    seq = simulate_sequence(4, (160, 160), seed=2, transmission=[1.0, 0.9, 0.55, 0.95],
                            star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))
    nsg = normalize_frames(seq.write(tmp_path / "in"), tmp_path / "in" / "frame_000.fits",
                           tmp_path / "nsg")
    assert [r.rejected for r in nsg.rows] == [False, False, True, False]
    w = StackWidget(make_napari_viewer())
    w.source.setCurrentText(SOURCE_FILES)
    w.files.setText(str(tmp_path / "nsg" / "*_nsg.fits"))
    w.stack()
    qtbot.waitUntil(lambda: w.result is not None and not w.busy, timeout=WAIT_MS)
    qtbot.wait(50)  # any progress event still queued must not replace the summary
    assert len(w.result.stacked) == 3 and len(w.result.skipped) == 1
    assert w.viewer.layers[LAYERS["n_used"]].data.max() == 3
    assert "3 frames stacked" in w.status.text()
    assert "1 rejected by normalize left out" in w.status.text()
