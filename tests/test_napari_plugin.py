"""The napari face: manifest, reader, writer and sample data in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg._reader import napari_get_reader
from napari_nsg._writer import write_fits
from napari_nsg.io import FrameError, read_frame


def test_manifest_validates_with_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-nsg")
    manifest.validate_imports()
    assert manifest.name == "napari-nsg"


def test_reader_claims_only_frames(tmp_path):
    assert napari_get_reader(str(tmp_path / "a.FITS")) is not None
    assert napari_get_reader([str(tmp_path / "a.fit"), str(tmp_path / "b.fts")]) is not None
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader([str(tmp_path / "a.fits"), str(tmp_path / "b.jpg")]) is None
    assert napari_get_reader([]) is None


def test_reader_colour_frame_becomes_three_channel_layers(tmp_path):
    path = tmp_path / "rgb.fits"
    data = np.stack([np.full((20, 30), v, np.float32) for v in (1.0, 2.0, 3.0)])
    data[:, 5, 5] = 10.0
    fits.PrimaryHDU(data).writeto(path)
    [(layer_data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "image" and layer_data.shape == (3, 20, 30)
    assert kwargs["channel_axis"] == 0 and kwargs["colormap"] == ["red", "green", "blue"]


def test_writer_keeps_header(tmp_path):
    header = fits.Header()
    header["EXPTIME"] = 30.0
    out = write_fits(str(tmp_path / "w.fits"), np.ones((6, 7), np.float32),
                     {"name": "x", "metadata": {"header": header}})
    frame = read_frame(out[0])
    assert frame.meta.exposure == 30.0 and frame.data.shape == (6, 7)


@pytest.mark.gui
@pytest.mark.real
def test_viewer_opens_a_real_fits_frame(make_napari_viewer, real_data):
    viewer = make_napari_viewer()
    path = real_data / "wasp12b_calibrated" / "wasp12b_300.fits"
    layers = viewer.open(str(path), plugin="napari-nsg")
    assert len(layers) == 1
    layer = viewer.layers["wasp12b_300"]
    assert layer.data.shape == (912, 1020) and layer.data.dtype == np.float32
    assert layer.metadata["meta"]["exposure"] == 100.0
    assert layer.metadata["header"]["FILTER"].strip() == "(2) r (530-700)"
    lo, hi = layer.contrast_limits
    assert 200 < lo < 300 < hi  # stretched around the ~269 ADU sky
    assert hi <= float(layer.data.max())  # limits inside the data range
    from napari_nsg._widgets._layers import is_row0_bottom

    assert is_row0_bottom(viewer)  # FITS row 0 at the bottom, like DS9


@pytest.mark.gui
@pytest.mark.real
def test_viewer_opens_an_upper_case_raw_colour_frame(make_napari_viewer, real_data):
    viewer = make_napari_viewer()
    path = next((real_data / "seestar_m94").glob("*.fit"))
    viewer.open(str(path), plugin="napari-nsg")
    (layer,) = viewer.layers
    assert layer.data.shape == (1920, 1080)  # a raw mosaic stays raw
    assert layer.metadata["meta"]["bayer_pattern"] == "GRBG"


def test_a_saved_stack_layer_opens_again_as_a_stack(tmp_path):
    """A stack of 5 frames (the sample subs' layer) is saved as a 5-plane cube and opens
    again as one stack layer (not refused as "neither mono nor RGB"); read_frame, which
    reads frames, still refuses it with the file's name."""
    cube = np.stack([np.full((20, 30), v, np.float32) for v in range(5)])
    header = fits.Header()
    header["OBJECT"] = "M42"
    out = write_fits(str(tmp_path / "subs.fits"), cube,
                     {"name": "subs", "metadata": {"header": header}})
    [(data, kwargs, kind)] = napari_get_reader(out[0])(out[0])
    assert kind == "image" and data.shape == (5, 20, 30) and "channel_axis" not in kwargs
    assert np.array_equal(data, cube) and kwargs["metadata"]["header"]["OBJECT"] == "M42"
    with pytest.raises(FrameError, match="subs.fits.*5 planes"):
        read_frame(out[0])


def test_a_multiscale_layer_is_saved_at_full_resolution(tmp_path):
    full = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    levels = [full, full[::2, ::2], full[::4, ::4]]
    out = write_fits(str(tmp_path / "m.fits"), levels, {"name": "m", "multiscale": True})
    frame = read_frame(out[0])
    assert np.array_equal(frame.data, full)
    assert "multiscale" in str(frame.header.get("HISTORY", ""))


@pytest.mark.gui
def test_sample_data_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nsg", "synthetic_subs")
    (layer,) = viewer.layers
    assert layer.data.ndim == 3 and layer.data.shape[0] >= 3
    scales = layer.metadata["true_scale"]
    assert len(scales) == layer.data.shape[0]
    viewer.open_sample("napari-nsg", "synthetic_pair")
    assert len(viewer.layers) == 3
    wide, narrow = viewer.layers[1:]
    assert (narrow.metadata["msgr_role"], wide.metadata["msgr_role"]) == ("narrow", "wide")
    ratio = narrow.metadata["header"]["FOCALLEN"] / wide.metadata["header"]["FOCALLEN"]
    assert narrow.data.shape == (600, 800) and ratio == pytest.approx(3.0)


@pytest.mark.gui
@pytest.mark.parametrize("name", ["Frames & reference", "Normalize (NSG)"])
def test_widgets_open_from_the_plugins_menu(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-nsg", name)
    assert widget.viewer is not None and dock is not None
    if name == "Normalize (NSG)":  # it shares the Frames widget's session (opened for it)
        from napari_nsg._widgets.frames import FramesWidget, find_widget

        frames = find_widget(viewer, FramesWidget)
        assert frames is not None and frames.session is widget.session


@pytest.mark.gui
def test_plots_open_from_the_plugins_menu_fed_by_the_normalize_widget(make_napari_viewer):
    from napari_nsg._widgets.frames import find_widget
    from napari_nsg._widgets.normalize import NormalizeWidget

    viewer = make_napari_viewer()
    _, plot = viewer.window.add_plugin_dock_widget("napari-nsg", "Transmission & weight graph")
    normalize = find_widget(viewer, NormalizeWidget)
    assert normalize is not None and plot is normalize.weights_plot
    _, photometry = viewer.window.add_plugin_dock_widget("napari-nsg", "Photometry graph")
    assert photometry is normalize.photometry_plot


def test_row0_setting_is_the_default_orientation(plugin_settings, npe2pm):
    from npe2 import PluginManifest

    from napari_nsg._widgets._layers import default_row0_bottom

    npe2pm.register(PluginManifest.from_distribution("napari-nsg"))
    from napari.settings import get_plugin_settings

    settings = get_plugin_settings("napari-nsg")
    assert settings.display.fits_row0_bottom is True and default_row0_bottom()
    settings.display.fits_row0_bottom = False
    assert default_row0_bottom() is False


@pytest.mark.gui
def test_the_sample_subs_layer_saves_and_opens_again(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nsg", "synthetic_subs")
    (layer,) = viewer.layers
    path = tmp_path / "subs.fits"
    layer.save(str(path), plugin="napari-nsg")
    viewer.open(str(path), plugin="napari-nsg")
    again = viewer.layers[-1]
    assert again.data.shape == layer.data.shape
    assert np.allclose(again.data, layer.data)
