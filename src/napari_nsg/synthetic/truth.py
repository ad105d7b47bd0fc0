"""The scalar truth of a simulated frame.

Model of frame ``k`` (channel ``c``, pixel ``p``)::

    frame_k = T_k * t_k * S_k + B_k + noise_k,   B_k = sky_k + G_k(p)

``S_k`` is the noise-free sky signal (stars + extended signal) per unit
transmission and exposure time (ADU/s), ``T_k`` the absolute transmission
(clouds, extinction), ``t_k`` the exposure time, ``sky_k`` a constant sky level
and ``G_k >= 0`` the additive gradient. With reference frame ``r``:

* ``scale_k = (T_r t_r) / (T_k t_k)``: the factor that multiplies frame ``k`` to
  bring it to the reference's brightness (the reference has 1);
* ``transmission_k = 1 / scale_k`` (relative to the reference);
* ``relative_gradient_k = scale_k * B_k - B_r``, so that
  ``scale_k * frame_k - relative_gradient_k = T_r t_r S_k + B_r + scale_k * noise_k``,
  the reference's noise-free image plus scaled noise (exactly so where
  ``S_k = S_r``, i.e. away from stars when the PSF differs between the frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FrameTruth"]


@dataclass(frozen=True, eq=False)
class FrameTruth:
    """Scalar truth of one frame of a :class:`~napari_nsg.synthetic.SimulatedSequence`.

    Per-channel values are arrays of shape ``(c,)`` (``c`` = 1 for mono, 3 for RGB
    and for Bayer frames, in R, G, B order).

    Attributes
    ----------
    index : int
        Position in the sequence.
    is_reference : bool
        True for the reference frame.
    scale : ndarray
        ``(T_r t_r) / (T_k t_k)``; multiplies this frame to match the reference.
    transmission : ndarray
        ``1 / scale``: brightness relative to the reference.
    absolute_transmission : ndarray
        ``T_k`` (1 = clear sky), per channel.
    exposure : float
        ``t_k`` in seconds (EXPTIME).
    sky : ndarray
        The constant sky level ``sky_k`` (ADU).
    gradient_amplitude : float
        Peak-to-peak range of the neutral gradient ``G_k`` (ADU); the colour
        channels differ by the gradient colours.
    mean_background : ndarray
        Mean of ``B_k = sky_k + G_k`` over all pixels (ADU).
    noise_sigma : ndarray
        Background noise sigma at the mean background:
        ``sqrt(mean_background / gain + read_noise^2)`` (ADU).
    fwhm : float
        PSF full width at half maximum (px).
    shift : tuple of float
        ``(dx, dy)`` registration jitter: the sky content of this frame is shifted
        by this many px relative to the catalogue (0 for the reference).
    altitude : float
        Target altitude at DATE-OBS (degrees).
    airmass : float
        AIRMASS written to the header (Kasten & Young from ``altitude``).
    date_obs : str
        DATE-OBS (UTC, ISO 8601).
    """

    index: int
    is_reference: bool
    scale: np.ndarray
    transmission: np.ndarray
    absolute_transmission: np.ndarray
    exposure: float
    sky: np.ndarray
    gradient_amplitude: float
    mean_background: np.ndarray
    noise_sigma: np.ndarray
    fwhm: float
    shift: tuple[float, float]
    altitude: float
    airmass: float
    date_obs: str

    def to_dict(self) -> dict:
        """JSON-ready dictionary (arrays become lists)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, (np.ndarray, tuple)):
                value = [float(v) for v in value]
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out
