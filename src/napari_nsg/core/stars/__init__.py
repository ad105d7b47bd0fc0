"""Stars: detection, matching reference<->target, aperture photometry."""

from .detection import StarTable, detect_stars, intensity, no_data_mask
from .matching import (
    OffsetEstimate,
    StarMatch,
    estimate_offset,
    gate_pairs,
    match_found,
    match_stars,
    measure_stars_at,
    vote_offset,
)
from .photometry import Photometry, aperture_photometry, pair_photometry

__all__ = [
    "OffsetEstimate",
    "Photometry",
    "StarMatch",
    "StarTable",
    "aperture_photometry",
    "pair_photometry",
    "detect_stars",
    "estimate_offset",
    "gate_pairs",
    "intensity",
    "match_found",
    "match_stars",
    "measure_stars_at",
    "no_data_mask",
    "vote_offset",
]
