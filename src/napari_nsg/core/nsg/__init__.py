"""NormalizeScaleGradient: photometric scale, relative gradient, weights.

The public entry points (see ``docs/nsg.md``):

* :func:`prepare_reference` -> :class:`ReferenceModel` (once per reference)
* :func:`measure_scale` -> :class:`ScaleResult` (scale/transmission only)
* :func:`target_weight` / :func:`compute_weight` -> :class:`FrameWeight`
* :func:`normalize_frame` -> :class:`NormalizationResult` (everything; its first
  steps alone: :func:`prepare_target` -> :class:`PreparedTarget`)
* :class:`NsgParameters` (defaults, ranges, auto values)
"""

from .correction import CoarseGrid, GradientField, apply_correction, evaluate_gradient
from .engine import (
    NormalizationResult,
    NsgError,
    PreparedTarget,
    ReferenceModel,
    ScaleResult,
    TargetPlan,
    measure_scale,
    measure_target_noise,
    normalize_frame,
    prepare_reference,
    prepare_target,
    reference_result,
    target_plan,
    target_weight,
)
from .noise import NoiseEstimate, measure_frame_noise, measure_noise, noise_from_keywords
from .params import NsgParameterError, NsgParameters
from .samples import SampleGrid, Samples, make_sample_grid, measure_samples
from .scale import ChannelScale, fit_scale
from .spline import SurfaceModel, fit_surface
from .weights import (
    FrameWeight,
    compute_weight,
    exposure_hint,
    rejection,
    relative_values,
    transmission_of,
)

__all__ = [
    "ChannelScale",
    "CoarseGrid",
    "FrameWeight",
    "GradientField",
    "NoiseEstimate",
    "NormalizationResult",
    "NsgError",
    "NsgParameterError",
    "NsgParameters",
    "PreparedTarget",
    "ReferenceModel",
    "SampleGrid",
    "Samples",
    "ScaleResult",
    "SurfaceModel",
    "TargetPlan",
    "apply_correction",
    "compute_weight",
    "evaluate_gradient",
    "exposure_hint",
    "fit_scale",
    "fit_surface",
    "make_sample_grid",
    "measure_frame_noise",
    "measure_noise",
    "measure_samples",
    "measure_scale",
    "measure_target_noise",
    "noise_from_keywords",
    "normalize_frame",
    "prepare_reference",
    "prepare_target",
    "reference_result",
    "rejection",
    "relative_values",
    "target_plan",
    "target_weight",
    "transmission_of",
]
