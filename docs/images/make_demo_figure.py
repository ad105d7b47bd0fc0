"""Render docs/images/demo.png from `napari-nsg demo` output.

    napari-nsg demo /tmp/demo-out && python docs/images/make_demo_figure.py /tmp/demo-out

Shows one simulated target before NSG, the reference, the target after NSG, and
the gradient model that was subtracted, all with the same display stretch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_nsg.io import read_frame  # noqa: E402


def main(demo_dir: str, target: str = "frame_006", out: str | None = None) -> Path:
    demo = Path(demo_dir)
    ref = read_frame(demo / "frames" / "frame_000.fits").data
    before = read_frame(demo / "frames" / f"{target}.fits").data
    after = read_frame(demo / "nsg" / f"{target}_nsg.fits").data
    gradient = read_frame(demo / "nsg" / f"{target}_gradient.fits").data
    lo, hi = np.percentile(ref, [1, 99.5])
    panels = [
        (before, f"{target}: before (own scale and gradient)", (lo, hi)),
        (ref, "reference frame_000", (lo, hi)),
        (after, f"{target}: after NSG", (lo, hi)),
        (gradient, "gradient model subtracted", None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), layout="constrained")
    for ax, (img, title, limits) in zip(axes, panels):
        if limits is None:
            im = ax.imshow(img, origin="lower", cmap="coolwarm")
            fig.colorbar(im, ax=ax, shrink=0.8, label="ADU")
        else:
            ax.imshow(np.clip((img - limits[0]) / (limits[1] - limits[0]), 0, 1) ** 0.5,
                      origin="lower", cmap="gray")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    path = Path(out) if out else Path(__file__).with_name("demo.png")
    fig.savefig(path, dpi=80)
    return path


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
