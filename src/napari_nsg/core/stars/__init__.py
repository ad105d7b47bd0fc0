"""Stars: detection, matching reference<->target, aperture photometry."""

from .detection import StarTable, detect_stars, intensity, no_data_mask

__all__ = ["StarTable", "detect_stars", "intensity", "no_data_mask"]
