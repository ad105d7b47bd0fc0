"""Adding or replacing napari layers with the project's display conventions.

Results are written into an existing layer of the same name (the user's
zoom, opacity and visibility stay as they are) or added as a new layer.
Colour ``(3, y, x)`` results become one layer per channel (``"<name> [R]"``
...), like the reader's layers. The display conventions themselves (zscale for
sky, own range for gradients, symmetric diverging limits for curvature) are in
:mod:`napari_nsg._layers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._layers import CHANNEL_COLORMAPS, display_kwargs

if TYPE_CHECKING:  # pragma: no cover
    import napari

ROW0_BOTTOM = ("up", "right")  # FITS / DS9: row 0 at the bottom
ROW0_TOP = ("down", "right")  # napari's default: row 0 on top
CHANNEL_NAMES = "RGB"
SETTINGS_KEY = "display"  # napari.yaml configurations: display.fits_row0_bottom
POINT_SIZE = 6
SHAPE_EDGE_WIDTH = 2


def channel_names(name: str, data: np.ndarray) -> list[str]:
    """Layer names of a result: ``[name]`` for mono, ``"name [R]"`` ... for colour."""
    if data.ndim == 3 and data.shape[0] == 3:
        return [f"{name} [{c}]" for c in CHANNEL_NAMES]
    return [name]


def styles_for(data: np.ndarray, kind: str = "sky") -> list[dict]:
    """The display settings of each channel layer of ``data`` (what :func:`upsert_image`
    computes; call it in a worker thread and pass the result as ``styles``)."""
    names = channel_names("", data)
    chans = list(data) if len(names) > 1 else [data]
    styles = []
    for i, chan in enumerate(chans):
        style = display_kwargs(chan, kind)
        if len(names) > 1 and kind == "sky":
            style["colormap"] = CHANNEL_COLORMAPS[i]
        style["range"] = _range_of(chan, style["contrast_limits"])
        styles.append(style)
    return styles


def upsert_image(viewer: napari.viewer.Viewer, name: str, data: np.ndarray, *,
                 kind: str = "sky", metadata: dict | None = None, restretch: bool = True,
                 styles: list[dict] | None = None, **kwargs) -> list:
    """Replace the data of the image layer(s) called ``name`` or add them.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    name : str
        The layer's name; a colour ``(3, y, x)`` image gives three layers
        ``"name [R]"``, ``"name [G]"``, ``"name [B]"``, blended additively.
    data : ndarray
    kind : {"sky", "gradient", "curvature", "mask"}
        Display convention (see :func:`napari_nsg._layers.display_kwargs`).
    metadata : dict, optional
    restretch : bool
        Recompute the contrast limits of an existing layer (False keeps the
        user's, e.g. while blinking with one shared stretch).
    styles : list of dict, optional
        :func:`styles_for` ``(data, kind)`` computed beforehand (in a worker).
    **kwargs
        Passed to ``viewer.add_image`` for a new layer (e.g. ``visible``).

    Returns
    -------
    napari.layers.Image or list of napari.layers.Image
        The layer of a mono image; the three channel layers of a colour one.
    """
    names = channel_names(name, data)
    chans = list(data) if len(names) > 1 else [data]
    styles = styles or styles_for(data, kind)
    layers = []
    for lname, chan, style in zip(names, chans, styles):
        layers.append(_put_image(viewer, lname, chan, dict(style), metadata, restretch,
                                 blending="additive" if len(names) > 1 else "translucent",
                                 **kwargs))
    return layers if len(layers) > 1 else layers[0]


def _put_image(viewer, name, data, style, metadata, restretch, blending, **kwargs):
    value_range = style.pop("range")
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        if restretch:
            layer.contrast_limits_range = value_range
            layer.contrast_limits = style["contrast_limits"]
        if metadata is not None:
            layer.metadata.update(metadata)
        return layer
    kwargs.setdefault("blending", blending)
    layer = viewer.add_image(data, name=name, metadata=dict(metadata or {}), **style, **kwargs)
    return layer


def _range_of(data: np.ndarray, limits) -> tuple[float, float]:
    """A slider range that holds the data and the limits."""
    finite = np.asarray(data)[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else limits
    lo, hi = min(lo, limits[0]), max(hi, limits[1])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def upsert_points(viewer: napari.viewer.Viewer, name: str, coords_yx: np.ndarray, *,
                  features: dict | None = None, **kwargs):
    """Replace the points (and their features) of the Points layer ``name`` or add it.

    Parameters
    ----------
    coords_yx : (n, 2) array
        ``(y, x)`` in pixels.
    features : dict of arrays, optional
        One value per point (shown in napari's status bar and layer features).
    **kwargs
        ``add_points`` options for a new layer (``size``, ``face_color``,
        ``border_color``, ``symbol``...).
    """
    coords = np.asarray(coords_yx, dtype=float).reshape(-1, 2)
    features = {k: np.asarray(v) for k, v in (features or {}).items()}
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = coords
        layer.features = features
        for key in ("size", "face_color", "border_color"):
            if key in kwargs and len(coords):
                setattr(layer, key, kwargs[key])
        return layer
    kwargs.setdefault("size", POINT_SIZE)
    return viewer.add_points(coords, name=name, features=features, **kwargs)


def upsert_shapes(viewer: napari.viewer.Viewer, name: str, shapes: list, *,
                  shape_type: str = "rectangle", features: dict | None = None, **kwargs):
    """Replace the shapes of the Shapes layer ``name`` or add it.

    Parameters
    ----------
    shapes : list of (k, 2) arrays
        Vertices ``(y, x)``; a rectangle or an ellipse is given by 4 corners
        (see :func:`box_corners`, :func:`circle_boxes`).
    shape_type : str
        napari shape type of every shape.
    """
    shapes = [np.asarray(s, dtype=float) for s in shapes]
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = []
        if shapes:
            layer.add(shapes, shape_type=shape_type)
        if features is not None:
            layer.features = {k: np.asarray(v) for k, v in features.items()}
        return layer
    kwargs.setdefault("edge_width", SHAPE_EDGE_WIDTH)
    kwargs.setdefault("face_color", "transparent")
    return viewer.add_shapes(shapes or None, shape_type=shape_type, name=name,
                             features=features, **kwargs)


def box_corners(box: tuple[int, int, int, int]) -> np.ndarray:
    """The 4 ``(y, x)`` corners of a ``(y0, x0, y1, x1)`` box (for a rectangle)."""
    y0, x0, y1, x1 = box
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)


def circle_boxes(x: np.ndarray, y: np.ndarray, radius: np.ndarray) -> list[np.ndarray]:
    """Bounding boxes of circles, the form napari's ellipses take."""
    return [box_corners((yy - r, xx - r, yy + r, xx + r)) for xx, yy, r in zip(x, y, radius)]


def remove_layers(viewer: napari.viewer.Viewer, names) -> None:
    """Remove the layers of these names that exist."""
    for name in names:
        if name in viewer.layers:
            viewer.layers.remove(name)


# -- orientation -----------------------------------------------------------------------------
def default_row0_bottom() -> bool:
    """The plugin-wide default: FITS row 0 at the bottom (the ``display.fits_row0_bottom``
    setting in napari's Preferences, True unless the user changed it)."""
    try:
        from napari.settings import get_plugin_settings

        return bool(getattr(get_plugin_settings("napari-nsg"), SETTINGS_KEY).fits_row0_bottom)
    except Exception:  # noqa: BLE001 - settings unavailable (old napari, no config): the default
        return True


def set_row0_bottom(viewer: napari.viewer.Viewer, bottom: bool = True) -> None:
    """Show row 0 at the bottom (astronomers' and DS9's convention) or on top (napari's).

    The camera is flipped, not the data, so pixel coordinates stay those of the file.
    """
    _camera(viewer).orientation2d = ROW0_BOTTOM if bottom else ROW0_TOP


def is_row0_bottom(viewer: napari.viewer.Viewer) -> bool:
    """Whether the viewer shows row 0 at the bottom."""
    vertical = _camera(viewer).orientation2d[0]
    return getattr(vertical, "value", vertical) == "up"


def _camera(viewer):
    """The camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
