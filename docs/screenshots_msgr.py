"""Re-take the screenshots of the MSGR widget for docs/msgr.md.

Simulates ``napari-nsg demo``'s wide/narrow pair (800x600 narrow, 3x coarser wide
rotated 25 deg), opens napari with the MSGR widget, runs each step and saves PNGs
``docs/images/msgr_*.png`` (with the helpers of ``docs/screenshots.py``)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshots_msgr.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshots import OUT, WINDOW, only, save, wait

PAIR = {"narrow_shape": (600, 800), "scale_ratio": 3.0, "rotation_deg": 25.0, "seed": 1, "gain": 25.0,
            "wide_gradient": 0.01 * 500.0 * 9}


def msgr_screens(viewer, app) -> None:
    """Drive the MSGR widget step by step in ``viewer`` and save one PNG per step."""
    from napari_nsg._widgets.msgr import LAYER, MsgrWidget
    from napari_nsg.synthetic import simulate_pair

    pair = simulate_pair(**PAIR)
    viewer.add_image(pair.wide, name="wide", metadata={"header": pair.wide_header})
    viewer.add_image(pair.narrow, name="narrow", metadata={"header": pair.narrow_header})
    widget = MsgrWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MSGR", area="right")
    widget.narrow_choice.value, widget.wide_choice.value = "narrow", "wide"

    widget.run_step("register")
    wait(app, [widget])
    widget.blend()
    only(viewer, {"narrow", LAYER["registered"], LAYER["stars"]})
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
