"""Re-take the screenshots of the napari workbench for the docs.

Simulates a short sequence of sub-frames (known gradients, one clouded frame),
writes them as FITS into a temporary folder, opens napari, drives each widget
and saves PNGs into ``docs/images/``::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshots.py

(or plain ``python docs/screenshots.py`` on a desktop). The images are
quantized to a 256-colour palette to keep them small.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from astropy.io import fits

OUT = Path(__file__).resolve().parent / "images"
WINDOW = (1280, 860)
SHAPE = (600, 900)
TRANSMISSION = (1.0, 0.95, 0.9, 0.6, 0.85, 0.8)  # frame 3: clouds
TIMEOUT_S = 120
PALETTE_COLOURS = 256


def simulate(folder: Path) -> list[Path]:
    """Write the simulated frames as FITS files; returns their paths."""
    from napari_nsg.synthetic import simulate_sequence

    seq = simulate_sequence(len(TRANSMISSION), SHAPE, seed=7, nebula=True,
                            transmission=list(TRANSMISSION), star_density=1.5e-3)
    paths = []
    for frame in seq.iter_frames():
        path = folder / f"m42_sub_{frame.index + 1:02d}.fits"
        fits.PrimaryHDU(frame.data, frame.header).writeto(path)
        paths.append(path)
    return paths


def wait(app, widgets, seconds: float = TIMEOUT_S) -> None:
    """Process Qt events until no widget is busy (then a little longer for drawing)."""
    end = time.monotonic() + seconds
    while any(w.busy for w in widgets) and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def save(viewer, app, name: str) -> Path:
    """Grab the whole window and save a palette PNG."""
    from PIL import Image

    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    path = OUT / name
    viewer.window._qt_window.grab().save(str(path))  # the window with its docks
    image = Image.open(path).convert("RGB")
    image.quantize(PALETTE_COLOURS, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.relative_to(OUT.parent.parent)}: {path.stat().st_size // 1024} KiB")
    return path


def only(viewer, visible: set[str]) -> None:
    """Show only these layers; the first of them (in layer order) is selected."""
    for layer in viewer.layers:
        layer.visible = layer.name in visible
    shown = [layer for layer in viewer.layers if layer.visible]
    if shown:
        viewer.layers.selection.active = shown[-1]


def docks(dock_map: dict, shown: set[str]) -> None:
    """Show only these dock widgets."""
    for name, dock in dock_map.items():
        dock.setVisible(name in shown)


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_nsg._widgets.frames import FramesWidget
    from napari_nsg._widgets.normalize import NormalizeWidget

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="nsg_screens_"))
    paths = simulate(tmp)
    viewer = napari.Viewer(title="napari-nsg")
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW)
    frames = FramesWidget(viewer)
    normalize = NormalizeWidget(viewer, session=frames.session)
    frames.frames_changed.connect(normalize.refresh_targets)
    frames.reference_changed.connect(lambda _: normalize.refresh_targets())
    dock_map = {
        "frames": viewer.window.add_dock_widget(frames, name="Frames & reference", area="right"),
        "normalize": viewer.window.add_dock_widget(normalize, name="Normalize (NSG)",
                                                   area="right"),
        "photometry": viewer.window.add_dock_widget(normalize.photometry_plot,
                                                    name="NSG photometry", area="bottom"),
        "gradient": viewer.window.add_dock_widget(normalize.gradient_plot,
                                                  name="NSG gradient profile", area="bottom"),
        "weights": viewer.window.add_dock_widget(normalize.weights_plot, name="NSG weights",
                                                 area="bottom"),
    }
    busy = [frames, normalize]

    # 1. frames and reference: the table, the recommendation, blink with corner boxes
    docks(dock_map, {"frames"})
    frames.add_files([str(p) for p in paths])
    wait(app, busy)
    frames.set_reference()
    wait(app, busy)
    frames.table.sortItems(1)  # by rank
    frames.show_frame(paths[3].name)  # the clouded frame, on the shared stretch
    viewer.reset_view()
    save(viewer, app, "nsg_frames.png")

    # 2. live preview: corrected target with the star pairs and sample bins
    docks(dock_map, {"normalize", "photometry"})
    normalize.target.setCurrentText(paths[1].name)
    normalize.preview()
    wait(app, busy)
    only(viewer, {"NSG preview: corrected", "NSG stars used", "NSG stars rejected"})
    save(viewer, app, "nsg_preview.png")

    # 3. the gradient model and its profile along a clicked row
    docks(dock_map, {"normalize", "gradient"})
    normalize.pick(SHAPE[0] // 3, 0)
    only(viewer, {"NSG preview: gradient", "NSG profile line"})
    save(viewer, app, "nsg_gradient.png")

    # 4. curvature: the gradient minus its plane, diverging colours centred on zero
    docks(dock_map, {"normalize"})
    only(viewer, {"NSG preview: curvature", "NSG rejection circles"})
    save(viewer, app, "nsg_curvature.png")

    # 5. run on all frames: results table and the weights with the cut-offs
    docks(dock_map, {"normalize", "weights"})
    normalize.run_all()
    wait(app, busy)
    clouded = paths[3].name
    normalize.results.select_name(clouded)
    wait(app, busy)
    only(viewer, {f"{clouded} normalized"})
    save(viewer, app, "nsg_results.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
