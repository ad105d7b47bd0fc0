"""The MSGR widget in a real napari viewer: steps as layers, the fit plot, Run all, cancel
during registration, bad input as notifications, saving, the real M67 pair."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.synthetic import sample_pair, simulate_pair
from napari_nsg.synthetic.scoring import residual_fraction

pytestmark = pytest.mark.gui

WAIT_MS = 240_000


@pytest.fixture(scope="module")
def pair():
    """The napari sample pair (= ``napari-nsg demo``'s: 800x600 narrow, ratio 3, 25 deg)."""
    return sample_pair()


@pytest.fixture
def errors(monkeypatch):
    seen: list[str] = []
    import napari.utils.notifications as notes

    monkeypatch.setattr(notes, "show_error", lambda msg: seen.append(str(msg)))
    monkeypatch.setattr(notes, "show_info", lambda msg: None)
    return seen


def _widget(viewer, pair, narrow="narrow", wide="wide"):
    from napari_nsg._widgets.msgr import MsgrWidget

    viewer.add_image(pair.narrow, name=narrow, metadata={"header": pair.narrow_header})
    viewer.add_image(pair.wide, name=wide, metadata={"header": pair.wide_header})
    w = MsgrWidget(viewer)
    w.narrow_choice.value, w.wide_choice.value = narrow, wide
    return w


def _run(qtbot, w, step):
    w.run_step(step)
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)


@pytest.mark.slow
def test_each_step_adds_its_layer_and_the_fit_plot(make_napari_viewer, qtbot, pair, errors,
                                                   tmp_path):
    from napari_nsg._widgets.msgr import LAYER
    from napari_nsg.io import read_frame

    viewer = make_napari_viewer()
    w = _widget(viewer, pair)
    _run(qtbot, w, "register")
    assert not errors
    for key in ("registered", "coverage", "stars"):
        assert LAYER[key] in viewer.layers
    assert "residual_px" in viewer.layers[LAYER["stars"]].features
    assert "scale ratio" in w.info.text()
    w.blend()
    assert viewer.layers[LAYER["registered"]].opacity == 0.5
    w.blink()
    assert not viewer.layers[LAYER["registered"]].visible
    w.params["stars"]["remove_stars"].value = True
    _run(qtbot, w, "stars")
    assert LAYER["star_mask"] in viewer.layers
    assert w.session.computed["register"] == 1  # the registration was not redone
    _run(qtbot, w, "fit")
    assert LAYER["narrow_large"] in viewer.layers and "automatic" in w.info.text()
    fit = w.session.fits[0]
    plotted = w.fit_plot.plotted
    assert len(plotted["wide"]) > 1000
    np.testing.assert_allclose(plotted["line_y"], fit.a + fit.b * plotted["line_x"])
    w.show_layers()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert viewer.layers[LAYER["layers"]].data.shape[0] == w.session.n_layers + 1
    _run(qtbot, w, "apply")
    assert not errors
    out = viewer.layers[LAYER["corrected"]].data
    np.testing.assert_array_equal(out, w.session.corrected)
    assert residual_fraction(pair, out) <= 0.10  # with star removal: measured 0.080
    assert LAYER["model"] in viewer.layers and LAYER["correction"] in viewer.layers
    # a new mode: the steps up to the fit are kept
    w.params["model"]["mode"].value = "additive"
    _run(qtbot, w, "apply")
    assert w.session.computed["fit"] == 1 and w.session.computed["apply"] == 2
    # the spline step off: only the removal is redone, and the spline's product goes
    with_spline = w.session.corrected.copy()
    w.params["model"]["spline"].value = "off"
    _run(qtbot, w, "apply")
    assert w.session.params.spline_smoothness is None and w.session.spline is None
    assert w.session.computed["fit"] == 1 and w.session.computed["apply"] == 3
    assert not np.array_equal(with_spline, w.session.corrected)
    # save a product with the plugin's writer: header + MSGR keywords
    path = tmp_path / "model.fits"
    w.save_product("model", path)
    h = read_frame(path).header
    assert h["MSGRKIND"] == "model" and h["MSGRMODE"] == "additive"
    assert h["MSGRLAY"] == w.session.n_layers


@pytest.mark.slow
def test_run_all_and_cancel_during_registration(make_napari_viewer, qtbot, pair, errors):
    from napari_nsg._widgets.msgr import LAYER

    viewer = make_napari_viewer()
    w = _widget(viewer, pair)
    w.params["register"]["ratio_min"].value = 1.5  # full search: registration takes a while
    seen = []
    w._progressed.connect(lambda g, d, t, m: seen.append(m))
    w.run_all()
    qtbot.waitUntil(lambda: any(m.startswith("matching star patterns") for m in seen),
                    timeout=WAIT_MS)
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert "cancelled" in w.status.text()
    assert "register" not in w.session.products and LAYER["registered"] not in viewer.layers
    w.run_all()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert not errors
    assert LAYER["corrected"] in viewer.layers
    assert residual_fraction(pair, viewer.layers[LAYER["corrected"]].data) <= 0.05


@pytest.mark.slow
def test_sample_pair_from_the_menu_runs_all(make_napari_viewer, qtbot, errors):
    """File > Open Sample > the pair, then Run all: narrow and wide are picked, MSGR works."""
    from napari_nsg._widgets.msgr import LAYER, MsgrWidget

    viewer = make_napari_viewer()
    w = MsgrWidget(viewer)
    viewer.open_sample("napari-nsg", "synthetic_pair")
    narrow = viewer.layers["simulated narrow field"]
    assert (w.narrow_choice.value, w.wide_choice.value) == (narrow.name, "simulated wide field")
    truth = sample_pair(narrow.metadata["simulation"]["seed"])
    np.testing.assert_array_equal(narrow.data, truth.narrow)  # the truth of the data shown
    w.run_all()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert not errors
    assert w.session.registration.scale_ratio == pytest.approx(truth.scale_ratio, rel=0.01)
    corrected = viewer.layers[LAYER["corrected"]].data
    assert residual_fraction(truth, narrow.data) > 0.8
    assert residual_fraction(truth, corrected) <= 0.10  # measured 0.031


def test_bad_input_gives_a_notification(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    a = simulate_pair((300, 400), seed=0, shift=(6.0, -4.0), channels=3)
    w = _widget(viewer, a)
    w.wide_choice.value = None
    w.run_all()
    assert errors and "choose a narrow and a wide image" in errors[-1]
    viewer.add_image(a.wide[:2], name="two channels")
    w.wide_choice.value = "two channels"
    w.run_all()  # colour narrow, a wide with other channels
    assert "3 channels and the wide 2" in errors[-1]
    w.wide_choice.value = "narrow"
    w.run_all()
    assert "the same layer" in errors[-1]
    assert not w.busy


@pytest.mark.slow
def test_no_overlap_gives_a_notification(make_napari_viewer, qtbot, pair, errors):
    viewer = make_napari_viewer()
    other = sample_pair(seed=9)
    viewer.add_image(other.wide, name="other wide")
    w = _widget(viewer, pair)
    w.wide_choice.value = "other wide"
    _run(qtbot, w, "register")
    assert errors and "no star pattern" in errors[-1]


@pytest.mark.real
@pytest.mark.slow
def test_m67_pair_from_files(make_napari_viewer, qtbot, real_data, errors):
    from napari_nsg._widgets.msgr import LAYER, MsgrWidget

    folder = real_data / "m67_wide_narrow"
    viewer = make_napari_viewer()
    w = MsgrWidget(viewer)
    w.load_files(folder / "M67_V.fits", folder / "M6707HH.fits")
    assert w.narrow_choice.value == "M67_V" and w.wide_choice.value == "M6707HH"
    _run(qtbot, w, "apply")  # sky-subtracted frames: the multiplicative mode refuses
    assert errors and "use the additive mode" in errors[-1]
    w.params["model"]["mode"].value = "additive"
    _run(qtbot, w, "apply")
    assert LAYER["corrected"] in viewer.layers
    assert w.session.n_layers == 5 and w.session.computed["register"] == 1  # auto N, 323 px
    assert w.session.registration.scale_ratio == pytest.approx(1 / 0.5028, rel=0.01)
    assert len(w.fit_plot.plotted["wide"]) > 1000
