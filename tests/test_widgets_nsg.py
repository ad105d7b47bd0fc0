"""The NSG workbench in a real napari viewer: base, layers, widgets and plots."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgError

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (collected instead of shown)."""
    seen: list[str] = []
    import napari.utils.notifications as notes

    monkeypatch.setattr(notes, "show_error", lambda msg: seen.append(str(msg)))
    return seen


# -- base: worker, progress, cancel, notifications ------------------------------------------
def _slow(n, *, progress=None, cancel=None, delay=0.02):
    for i in range(n):
        if cancel.is_set():
            from napari_nsg.pipeline.progress import Cancelled

            raise Cancelled("cancelled")
        progress(i, n, f"step {i}")
        time.sleep(delay)
    return n * 2


def test_worker_returns_and_reports_progress(make_napari_viewer, qtbot):
    from napari_nsg._widgets._base import WorkbenchWidget

    w = WorkbenchWidget(make_napari_viewer())
    w.add_status_row()
    got = []
    w.start(_slow, 5, on_done=got.append, label="test job")
    assert w.busy and w.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert got == [10]
    assert "step" in w.status.text()
    assert not w.cancel_button.isEnabled()


def test_cancel_stops_a_job(make_napari_viewer, qtbot):
    from napari_nsg._widgets._base import WorkbenchWidget

    w = WorkbenchWidget(make_napari_viewer())
    got = []
    w.start(_slow, 1000, on_done=got.append, delay=0.01)
    qtbot.waitUntil(lambda: "step" in w.status.text(), timeout=WAIT_MS)
    w.cancel_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert got == [] and w.status.text() == "cancelled"


def test_errors_become_notifications(make_napari_viewer, qtbot, errors):
    from napari_nsg._widgets._base import WorkbenchWidget

    def fails(*, progress=None, cancel=None):
        raise NsgError("frame x.fits: no stars found")

    w = WorkbenchWidget(make_napari_viewer())
    w.start(fails)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert errors == ["frame x.fits: no stars found"]


def test_a_newer_job_drops_the_older_result(make_napari_viewer, qtbot):
    from napari_nsg._widgets._base import WorkbenchWidget

    w = WorkbenchWidget(make_napari_viewer())
    got = []
    lock = threading.Lock()
    w.start(_slow, 200, on_done=got.append, lock=lock, delay=0.005)
    w.start(_slow, 3, on_done=got.append, lock=lock)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    qtbot.wait(50)
    assert got == [6]


# -- layer conventions -------------------------------------------------------------------------
def test_upsert_image_conventions_and_replacement(make_napari_viewer):
    from napari_nsg._widgets._layers import upsert_image

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :80]
    gradient = (0.5 * xx + 0.2 * yy).astype(np.float32)  # 0 .. 52
    (g,) = upsert_image(viewer, "g", gradient, kind="gradient")
    lo, hi = g.contrast_limits
    assert gradient.min() <= lo < 1.0 and 51.0 < hi <= gradient.max()
    curvature = rng.normal(0, 0.01, (64, 80)).astype(np.float32)
    (c,) = upsert_image(viewer, "c", curvature, kind="curvature")
    lo, hi = c.contrast_limits
    assert lo == pytest.approx(-hi) and 0.02 < hi < 0.04  # small curvature gets the whole colormap
    assert c.colormap.name == "RdBu_r"
    # replacing keeps the layer object and restretches to the new data
    (g2,) = upsert_image(viewer, "g", gradient * 10, kind="gradient")
    assert g2 is g and g.contrast_limits[1] > 500
    colour = np.stack([gradient, gradient * 2, gradient * 3])
    layers = upsert_image(viewer, "rgb", colour, kind="sky")
    assert [la.name for la in layers] == ["rgb [R]", "rgb [G]", "rgb [B]"]
    assert all(la.contrast_limits[1] <= ch.max() for la, ch in zip(layers, colour))


def test_row0_bottom_flips_the_camera_not_the_data(make_napari_viewer):
    from napari_nsg._widgets._layers import is_row0_bottom, set_row0_bottom

    viewer = make_napari_viewer()
    set_row0_bottom(viewer, True)
    assert is_row0_bottom(viewer)
    set_row0_bottom(viewer, False)
    assert not is_row0_bottom(viewer)
