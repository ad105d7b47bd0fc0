"""Is the target registered to the reference? Refuse frames that are not.

NSG measures a target's stars at the reference stars' positions (after at most
a small whole-frame shift). On a frame that is not registered (a drift of
hundreds of pixels, a rotation) a handful of stars still land by chance within
the search radius of some reference star, and a scale fitted to those chance
pairs is a random number. A registered frame pairs a large share of the stars
it shows; an unregistered one a few percent. :func:`check_registered` compares
the pairs found with the stars the target should show there (the reference
candidates that fall on the target's data, thinned by the target's own star
count relative to the reference's, so a frame dimmed by clouds is not
mistaken for a misaligned one) and raises :class:`UnregisteredError` when
far fewer were paired.
"""

from __future__ import annotations

import numpy as np

from ..stars import StarTable, detect_stars, no_data_mask

#: A target pairing fewer than this share of the stars expected in it is not registered.
MIN_PAIRED_FRACTION = 0.2
#: Below this many expected stars the share says nothing: no verdict.
MIN_EXPECTED_STARS = 10
#: What to tell the user.
REGISTER_HINT = "register the frames first (napari-nsg register)"


class UnregisteredError(ValueError):
    """The target is not registered to the reference: its stars are elsewhere."""


def candidates_on_data(candidates: StarTable, target_intensity: np.ndarray,
                       offset: tuple[float, float]) -> int:
    """How many reference candidates, shifted by ``offset``, fall on the target's data."""
    h, w = target_intensity.shape
    x = np.round(np.asarray(candidates.x) + offset[0]).astype(int)
    y = np.round(np.asarray(candidates.y) + offset[1]).astype(int)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    valid = ~no_data_mask(target_intensity)
    return int(valid[y[inside], x[inside]].sum())


def expected_pairs(n_on_data: int, n_target_stars: int, n_reference_stars: int) -> float:
    """Stars a registered target would pair: the candidates on its data, times its
    star count relative to the reference's (at most 1: clouds thin the stars out)."""
    share = min(1.0, n_target_stars / max(1, n_reference_stars))
    return n_on_data * share


def check_registered(n_paired: int, candidates: StarTable, reference_stars: StarTable,
                     target_intensity: np.ndarray, offset: tuple[float, float], *,
                     threshold: float, target_stars: StarTable | None = None) -> None:
    """Raise :class:`UnregisteredError` when the target pairs too few stars to be registered.

    Parameters
    ----------
    n_paired : int
        Reference candidates paired with a target star.
    candidates, reference_stars : StarTable
        The reference's measurable candidates and all its detected stars.
    target_intensity : ndarray (y, x)
    offset : (float, float)
        The whole-frame shift removed before pairing.
    threshold : float
        Detection threshold (sigma) the reference stars were found with.
    target_stars : StarTable, optional
        The target's detected stars if already known (else detected here, only
        when the pairs are suspiciously few).
    """
    if n_paired >= MIN_PAIRED_FRACTION * len(candidates):  # n_on is at most all: no mask needed
        return
    n_on = candidates_on_data(candidates, target_intensity, offset)
    if n_on < MIN_EXPECTED_STARS or n_paired >= MIN_PAIRED_FRACTION * n_on:
        return
    if target_stars is None:
        target_stars = detect_stars(target_intensity, threshold=threshold)
    expected = expected_pairs(n_on, len(target_stars), len(reference_stars))
    if expected < MIN_EXPECTED_STARS or n_paired >= MIN_PAIRED_FRACTION * expected:
        return
    raise UnregisteredError(
        f"the frame is not registered to the reference: only {n_paired} of the about "
        f"{expected:.0f} stars expected were found at the reference's star positions, though "
        f"the frame shows {len(target_stars)} stars (the reference {len(reference_stars)}); "
        f"a scale from chance pairs would be meaningless: {REGISTER_HINT}")
