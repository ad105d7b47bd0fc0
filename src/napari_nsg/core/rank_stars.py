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

import numpy as np

from .stars import StarTable, detect_stars

# sep's extraction, and the objects kept and tabulated, exactly as detect_stars does them
from .stars.detection import MESH, _extract, _star_table, _Subtracted, mesh_background

MIN_AREA = 5  # detect_stars' defaults
DEBLEND_CONT = 0.005
EDGE = 3


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
