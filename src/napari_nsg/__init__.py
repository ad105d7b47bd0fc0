"""napari-nsg: sky-gradient removal for astrophotographs.

Two methods, each usable from Python, the ``napari-nsg`` command and napari:

* NSG (NormalizeScaleGradient): bring registered sub-frames to one reference's
  brightness scale and gradient by star photometry plus a smooth surface spline.
* MSGR (Multiscale Gradient Removal): correct a narrow-field image with a
  wide-field image of the same sky.

The package root stays light: it imports no Qt, napari or astropy, so that the
napari manifest and the command line start quickly.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
