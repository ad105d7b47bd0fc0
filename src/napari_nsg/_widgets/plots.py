"""The NSG plots as Plugins-menu entries: each returns the plot of the viewer's
Normalize (NSG) widget (opened if needed), which feeds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .frames import find_widget
from .normalize import NormalizeWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari


def _normalize_widget(viewer: napari.viewer.Viewer | None) -> NormalizeWidget:
    if viewer is None:  # napari injects a viewer into widget classes only
        from napari import current_viewer

        viewer = current_viewer()
    found = find_widget(viewer, NormalizeWidget)
    if found is None:
        _, found = viewer.window.add_plugin_dock_widget("napari-nsg", "Normalize (NSG)")
    return found


def photometry_plot(napari_viewer: napari.viewer.Viewer | None = None):
    """Reference vs target star flux of the previewed frame, with the fitted scale."""
    return _normalize_widget(napari_viewer).photometry_plot


def gradient_plot(napari_viewer: napari.viewer.Viewer | None = None):
    """Row or column profile of the gradient samples and model of the previewed frame."""
    return _normalize_widget(napari_viewer).gradient_plot


def weights_plot(napari_viewer: napari.viewer.Viewer | None = None):
    """Relative transmission and weight of every frame of the last run, with the cut-offs."""
    return _normalize_widget(napari_viewer).weights_plot
