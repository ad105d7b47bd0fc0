"""Registration of a wide-field image onto a narrow-field image (MSGR step 1).

* :mod:`.matching` - scale/rotation/flip-invariant star-pattern matching in
  windows of a much larger wide field (triangle invariants + voting + verification).
* :mod:`.transforms` - similarity, homography, thin-plate distortion spline.
* :mod:`.refine` - all-star pairing, projective fit, windowed centroids, spline.
* :mod:`.warp` - maps on a coarse grid, ``cv2.remap``, coverage.
* :mod:`.register` - the whole step: :func:`register_wide_to_narrow`.
"""

from .matching import MatchResult, match_similarity
from .refine import RefinedModel, pair_stars, refine_model, windowed_centroids
from .register import (
    DEFAULT_SCALE_RANGE,
    Registration,
    RegistrationError,
    apply_registration,
    register_wide_to_narrow,
    solve_registration,
)
from .transforms import (
    DistortionSpline,
    Similarity,
    WideTransform,
    apply_homography,
    fit_homography,
    fit_similarity,
)
from .warp import INTERPOLATIONS, model_maps, warp_image

__all__ = [
    "DEFAULT_SCALE_RANGE",
    "INTERPOLATIONS",
    "DistortionSpline",
    "MatchResult",
    "RefinedModel",
    "Registration",
    "RegistrationError",
    "Similarity",
    "WideTransform",
    "apply_homography",
    "apply_registration",
    "fit_homography",
    "fit_similarity",
    "match_similarity",
    "model_maps",
    "pair_stars",
    "refine_model",
    "register_wide_to_narrow",
    "solve_registration",
    "warp_image",
    "windowed_centroids",
]
