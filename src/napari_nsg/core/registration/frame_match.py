"""Matching a frame's stars to the reference's, the reference prepared once per run.

:func:`~.frames.register_frame` is called once per frame with the same
reference. What depends on the reference alone is made once and kept
(:func:`reference_index`): its Gaussian-windowed centroids (all its stars, at
full resolution). Per frame (:func:`match_frame`):

1. the star-pattern matcher (:func:`~.matching.match_similarity`) on the
   :data:`QUICK_REFERENCE` brightest reference stars and the
   :data:`QUICK_FRAME` brightest of the frame (frames of one camera share their
   brightest stars: 20 x 40 instead of 30 x 70, 6x fewer triangles);
2. the refinement (:func:`~.refine.refine_model`) pairs all stars on their
   detected positions and fits the pairs' windowed centroids, as
   :func:`~.register.solve_registration` does: the reference's are the kept ones,
   the frame's paired stars are measured in the refinement (the big frames'
   :func:`~.frame_stars.bright_stars` again, in the reference's window).

None when the quick match fails: the caller then runs the full search
(:func:`~.register.solve_registration`), so nothing that registered before fails now.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..stars import StarTable, intensity
from .frame_stars import EDGE, QUICK_BIN, bright_stars, measure_candidates
from .matching import match_similarity
from .refine import refine_model, windowed_centroids

__all__ = ["FrameMatch", "ReferenceIndex", "match_frame", "reference_index", "window_fwhm"]

#: Brightest reference and frame stars of the quick star-pattern search.
QUICK_REFERENCE = 20
QUICK_FRAME = 40
#: First pairing tolerance of the refinement (px), as :func:`~.register.solve_registration`.
PAIR_TOL = 2.5
#: A saturated frame star is looked for within this distance (px) of a predicted reference star.
SATURATED_REACH = 3.0
#: Stars of the reference's own bright_stars its sep stars are checked against (at least),
#: and the border (px) where bright_stars does not look (EDGE binned px, and a margin).
OWN_STARS = 800
EDGE_PX = 4 * QUICK_BIN * EDGE
#: References kept (one per run; a few for interleaved runs in one process).
CACHE_SIZE = 4


def window_fwhm(stars: StarTable) -> float:
    """The centroid window: the median FWHM of the stars (as :mod:`.register`)."""
    return float(np.median(stars.fwhm))


@dataclass(frozen=True)
class ReferenceIndex:
    """What the matching needs of the reference, made once per run.

    Attributes
    ----------
    shape : (int, int)
        The reference's ``(height, width)`` (the image itself is not kept: the index
        is kept only as long as the caller keeps the reference).
    stars : StarTable
        Its stars as compact as stars (:func:`~.frame_stars.point_like`: no knot of
        nebulosity, no small galaxy), brightest first.
    xy : ndarray, (n, 2)
        Their Gaussian-windowed centroids (in a window of their median FWHM).
    """

    shape: tuple
    stars: StarTable
    xy: np.ndarray


_CACHE: list = []  # (weakref to the reference, weakref to its stars, ReferenceIndex)
_LOCK = threading.Lock()


def _point_stars(reference: np.ndarray, stars: StarTable) -> StarTable:
    """The stars as compact as stars by the frames' rule (:func:`~.frame_stars.point_like`
    on the FWHM from the area above half the peak, measured in stamps of the reference),
    and among the brighter half (sep's flux) only those the big frames' detector finds too
    (:func:`~.frame_stars.bright_stars`, within :data:`PAIR_TOL`; near the edges, where it
    does not look, all): a bright nebula's knots fill the brightest ranks of the reference
    too. Not on sep's FWHM or its flux over peak: both grow with the brightness
    (isophotal), and dropped up to the 13 brightest stars of the real wasp12b frames."""
    if not len(stars):
        return stars
    _, point, _ = measure_candidates(reference, stars.x, stars.y, 2 * QUICK_BIN)
    own = bright_stars(reference, max(len(stars), OWN_STARS))
    if len(own):
        seen = cKDTree(own.xy).query(stars.xy, distance_upper_bound=PAIR_TOL)[0] < np.inf
        h, w = np.shape(reference)[-2:]
        near_edge = np.any((stars.xy < EDGE_PX) | (stars.xy > np.array([w, h]) - EDGE_PX),
                           axis=1)
        bright = stars.flux > np.median(stars.flux[seen]) if seen.any() else True
        point &= seen | near_edge | ~bright | stars.saturated
    return stars if point.all() else stars.take(np.flatnonzero(point))


def reference_index(reference: np.ndarray, stars: StarTable) -> ReferenceIndex:
    """The :class:`ReferenceIndex` of ``reference`` and its ``stars``, kept for the next call
    with the same two objects (as long as they live)."""
    with _LOCK:
        for ref, st, index in _CACHE:
            if ref() is reference and st() is stars:
                return index
    kept = _point_stars(reference, stars)
    xy = (windowed_centroids(reference, kept.xy, window_fwhm(kept)) if len(kept)
          else kept.xy)  # a colour reference: on the mean of its channels' stamps
    index = ReferenceIndex(shape=tuple(np.shape(reference)[-2:]), stars=kept, xy=xy)
    try:
        entry = (weakref.ref(reference), weakref.ref(stars), index)
    except TypeError:  # not weakly referenceable (e.g. a memmap subclass): not kept
        return index
    with _LOCK:
        _CACHE[:] = [e for e in _CACHE if e[0]() is not None and e[1]() is not None]
        _CACHE.insert(0, entry)
        del _CACHE[CACHE_SIZE:]
    return index


@dataclass
class FrameMatch:
    """The refined star pairs of one frame (reference -> frame, windowed centroids)."""

    narrow_xy: np.ndarray
    wide_xy: np.ndarray
    flip: bool


def _excluded(index: ReferenceIndex, frame: StarTable, similarity) -> np.ndarray:
    """Per reference star: saturated in either image (paired, kept out of the fits)."""
    exclude = index.stars.saturated.copy()
    if frame.saturated.any():
        pred = similarity(index.stars.xy)
        near = cKDTree(frame.xy).query(pred, distance_upper_bound=SATURATED_REACH)[1]
        hit = near < len(frame)
        exclude[hit] |= frame.saturated[near[hit]]
    return exclude


def match_frame(index: ReferenceIndex, frame: np.ndarray, stars: StarTable, *,
                measured: bool, scale_range: tuple[float, float], min_pairs: int
                ) -> FrameMatch | None:
    """The frame's star pairs with the reference by the quick search; None if it fails.

    Parameters
    ----------
    index : ReferenceIndex
    frame : ndarray, (y, x) or (c, y, x)
    stars : StarTable
        The frame's stars, brightest first.
    measured : bool
        Their positions are windowed centroids already (:func:`~.frame_stars.bright_stars`).
    scale_range : (float, float)
        Frame px per reference px accepted.
    min_pairs : int
    """
    shape = index.shape
    lo, hi = scale_range  # as register_frame gives it to solve_registration
    match = match_similarity(index.stars.xy, stars.xy, shape, np.shape(frame)[-2:],
                             scale_range=(lo, hi), n_narrow=QUICK_REFERENCE,
                             max_wide_per_window=QUICK_FRAME, min_pairs=min_pairs)
    if match is None:
        return None
    # the paired frame stars measured in the window of the reference's (a big frame's were
    # in their own: on real stars the centroid moves with the window, 0.4-1 px between
    # 19 and 25 px on a real frame upscaled 3x, which registered 0.07-0.10 px off so)
    measure = ({"wide_image": frame, "wide_fwhm": window_fwhm(index.stars)} if measured
               else {"wide_image": intensity(frame), "wide_fwhm": window_fwhm(stars)})
    try:
        refined = refine_model(index.stars.xy, stars.xy, match.similarity,
                               exclude=_excluded(index, stars, match.similarity),
                               narrow_shape=shape, tol=PAIR_TOL, distortion=False,
                               min_pairs=min_pairs, narrow_refined=index.xy, **measure)
    except ValueError:
        return None
    ratio, _, flip = refined.transform.local_similarity(((shape[1] - 1) / 2.0,
                                                         (shape[0] - 1) / 2.0))
    if not (lo * 0.97 <= ratio <= hi * 1.03):
        return None
    return FrameMatch(refined.narrow_xy, refined.wide_xy, bool(flip))
