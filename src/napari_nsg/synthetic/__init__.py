"""Sky simulator with exact truth, for tests, benchmarks, demos and sample data.

* :func:`simulate_sequence` - registered sub-frames of one field with per-frame
  transmission, sky level, gradient, PSF, noise, zero borders; mono, RGB or Bayer.
  :func:`iter_sequence` and :func:`write_sequence` produce them one at a time.
* :func:`simulate_pair` - a narrow-field and a wide-field image of the same sky
  with a known geometric transform (for MSGR).
* :func:`sample_sequence`, :func:`sample_pair` - small fast data for napari.

The model and the exact truth definitions are in :mod:`napari_nsg.synthetic.truth`
(sequences), :mod:`napari_nsg.synthetic.pair` and ``docs/simulator.md``. No Qt
or napari import happens here.
"""

from .background import GradientModel, random_gradient
from .borders import Border
from .nebula import Nebula
from .pair import PairTransform, SimulatedPair, sample_pair, simulate_pair
from .psf import PSF, render_stars
from .sequence import (
    SimulatedFrame,
    SimulatedSequence,
    iter_sequence,
    read_truth,
    sample_sequence,
    simulate_sequence,
    write_sequence,
)
from .stars import StarCatalog, StarList
from .truth import FrameTruth

__all__ = [
    "PSF",
    "Border",
    "FrameTruth",
    "GradientModel",
    "Nebula",
    "PairTransform",
    "SimulatedFrame",
    "SimulatedPair",
    "SimulatedSequence",
    "StarCatalog",
    "StarList",
    "iter_sequence",
    "random_gradient",
    "read_truth",
    "render_stars",
    "sample_pair",
    "sample_sequence",
    "simulate_pair",
    "simulate_sequence",
    "write_sequence",
]
