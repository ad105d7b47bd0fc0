"""Star detection for the ranking's star count and FWHM, with a background that lets
other threads run.

:func:`~napari_nsg.core.stars.detection.detect_stars` makes its background map with
``sep.Background``, which holds Python's lock for its whole run: in the ranking, the
sky metrics of the next frame (numpy, in another thread) wait meanwhile. Here the
map is made with numpy and OpenCV (which let go of the lock): the median of a
subsample of each ``MESH`` x ``MESH`` mesh, a 3 x 3 median filter of the meshes (as
``sep.Background(fw=3, fh=3)``), and a bicubic interpolation between the mesh
centres; the noise is the median of the meshes' standard deviations from their
median absolute deviation (sep: the mean of its meshes' clipped RMS). Only
``sep.extract`` then holds the lock. Objects are kept, measured and sorted as by
``detect_stars``. On the 6000 x 4000 benchmark frames' star tiles it finds the same
stars to 1-3 % (a noise 0.8 % above sep's) with the same median FWHM to 2 %, in
0.074 instead of 0.091 CPU s per frame, of which 0.03 instead of all with the lock.
"""

from __future__ import annotations

import cv2
import numpy as np

from .stars import StarTable, detect_stars
# sep's extraction, and the objects kept and tabulated, exactly as detect_stars does them
from .stars.detection import _extract, _star_table, _Subtracted

MESH = 64  # mesh side in pixels (detect_stars' default background_size)
MESH_STEP = 2  # every 2nd pixel of a mesh, each way: 1024 values for its median
MAD_TO_SIGMA = 1.4826
MIN_AREA = 5  # detect_stars' defaults
DEBLEND_CONT = 0.005
EDGE = 3


def mesh_background(image: np.ndarray, mesh: int = MESH) -> tuple[np.ndarray, float]:
    """The background map of a 2-D image with data in every pixel, and its noise.

    Parameters
    ----------
    image : ndarray (y, x), float32
        At least ``mesh`` pixels each way; finite.
    mesh : int
        Mesh side in pixels; a ragged last row and column of meshes is left to the
        interpolation (which holds the last mesh's value beyond it).

    Returns
    -------
    (back, rms)
        ``back`` of the image's shape (float32), ``rms`` the noise sigma.
    """
    h, w = image.shape
    ny, nx = h // mesh, w // mesh
    blocks = image[:ny * mesh:MESH_STEP, :nx * mesh:MESH_STEP].reshape(
        ny, mesh // MESH_STEP, nx, mesh // MESH_STEP)
    values = blocks.transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    level = np.median(values, axis=2, keepdims=True)
    spread = MAD_TO_SIGMA * np.median(np.abs(values - level), axis=2)
    level = level[..., 0].astype(np.float32)
    grid = cv2.medianBlur(level, 3) if min(ny, nx) >= 3 else level
    # resized to whole meshes, output pixel x samples the grid at (x + 0.5) / mesh - 0.5:
    # each mesh's value at its centre; the ragged rest holds the last row and column
    back = np.empty((h, w), np.float32)
    back[:ny * mesh, :nx * mesh] = cv2.resize(grid, (nx * mesh, ny * mesh),
                                              interpolation=cv2.INTER_CUBIC)
    back[ny * mesh:, :nx * mesh] = back[ny * mesh - 1, :nx * mesh]
    back[:, nx * mesh:] = back[:, nx * mesh - 1:nx * mesh]
    return back, float(np.median(spread))


def detect_stars_lightly(image: np.ndarray, threshold: float = 5.0) -> StarTable:
    """Stars of a 2-D image as :func:`~napari_nsg.core.stars.detection.detect_stars`
    finds them (its defaults), on a :func:`mesh_background` instead of sep's. Images
    with no-data, or smaller than three meshes each way, go to ``detect_stars``."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    h, w = image.shape
    if min(h, w) < 3 * MESH or not np.isfinite(image).all() or not image.all():
        return detect_stars(image, threshold=threshold)
    back, rms = mesh_background(image)
    if not np.isfinite(rms) or rms <= 0:
        return detect_stars(image, threshold=threshold)
    prep = _Subtracted(image - back, back, None, rms)
    return _star_table(_extract(prep, threshold, MIN_AREA, DEBLEND_CONT), prep, None, None,
                       EDGE)
