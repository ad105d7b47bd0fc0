"""Re-take the screenshots of the MSGR widget for docs/msgr.md.

Opens napari's sample wide/narrow pair (File > Open Sample > NSG Gradient Tools: ``napari-nsg
demo``'s pair, 800x600 narrow, 3x coarser wide rotated 25 deg) with the MSGR widget, which
picks the narrow and wide layers itself, runs each step and saves PNGs
``docs/images/msgr_*.png`` (with the helpers of ``docs/screenshots.py``)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshots_msgr.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshots import OUT, WINDOW, only, save, wait

NARROW = "simulated narrow field"  # the sample pair's layer


def msgr_screens(viewer, app) -> None:
    """Drive the MSGR widget step by step in ``viewer`` and save one PNG per step."""
    from napari_nsg._widgets.msgr import LAYER, MsgrWidget

    widget = MsgrWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MSGR", area="right")
    viewer.open_sample("napari-nsg", "synthetic_pair")
    if widget.narrow_choice.value != NARROW:
        raise RuntimeError(f"the widget picked {widget.narrow_choice.value!r} as narrow, not {NARROW!r}")

    widget.run_step("register")
    wait(app, [widget])
    widget.blend()
    only(viewer, {NARROW, LAYER["registered"], LAYER["stars"]})
    viewer.layers[LAYER["registered"]].colormap = "magenta"
    viewer.layers[LAYER["registered"]].blending = "additive"
    viewer.reset_view()
    save(viewer, app, "msgr_register.png")

    widget.run_step("fit")
    wait(app, [widget])
    only(viewer, {LAYER["narrow_large"]})
    save(viewer, app, "msgr_fit.png")

    widget.show_layers()
    wait(app, [widget])
    only(viewer, {LAYER["layers"]})
    viewer.dims.set_point(0, 2)
    save(viewer, app, "msgr_layers.png")
    viewer.dims.set_point(0, 0)

    widget.run_step("smooth")
    wait(app, [widget])
    only(viewer, {LAYER["model"]})
    save(viewer, app, "msgr_model.png")

    widget.run_step("apply")
    wait(app, [widget])
    only(viewer, {LAYER["corrected"]})
    save(viewer, app, "msgr_corrected.png")


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-nsg")
    viewer.window._qt_window.resize(*WINDOW)
    msgr_screens(viewer, QApplication.instance())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
