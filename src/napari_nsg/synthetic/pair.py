"""A narrow-field and a wide-field image of the same sky (the MSGR test case).

Sky coordinates are the narrow image's pixel coordinates: one sky unit is one
narrow pixel, and the narrow pixel ``(x, y)`` (centre at integers) sees the
sky point ``(x, y)``. The wide image's pixels are ``scale_ratio`` times larger.
The map from narrow to wide pixel coordinates is a similarity followed by
radial distortion in the wide optics (:class:`PairTransform`).

Surface-brightness convention: a pixel collects its area times the surface
brightness. The extended signal (and the sky) is given in ADU per *narrow*
pixel, so a wide pixel (area ``scale_ratio^2`` narrow pixels) records
``wide_throughput * scale_ratio^2`` times the narrow value of the same sky
point, and a star of flux ``F`` ADU in the narrow image has ``wide_throughput *
F`` ADU in the wide image. (The distortion's small change of pixel area is
ignored.) With the default ``wide_throughput = 1`` both instruments collect the
same light per unit solid angle.

Truth: ``narrow = narrow_signal + narrow_sky + narrow_gradient + noise`` and
``wide = wide_signal + wide_sky + wide_gradient + noise`` (values clipped at the
saturation level), with the signals noise-free stars + extended signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from astropy.io import fits

from ._rng import stream
from .background import random_gradient
from .headers import frame_header, pixel_scale_arcsec
from .nebula import Nebula, coarse_step, random_nebula, render_smooth
from .noise import add_noise, noise_sigma
from .psf import PSF, render_stars
from .stars import StarCatalog, StarList, observed_stars, random_catalog

__all__ = ["SAMPLE_PAIR", "PairTransform", "SimulatedPair", "field_pair", "field_pair_settings",
           "sample_pair", "simulate_pair"]


@dataclass(frozen=True)
class PairTransform:
    """Exact map between narrow and wide pixel coordinates.

    ``narrow_to_wide(p) = D(A p + t)``: the similarity ``A = R(rotation) F /
    scale_ratio`` (``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acting on
    ``(x, y)``; ``F = diag(-1, 1)`` when ``flip``, else the identity) with ``t``
    chosen so that the narrow frame's centre lands on the wide frame's centre
    plus ``shift``; then the wide optics' radial distortion
    ``D(q) = c + (q - c) (1 + distortion * |q - c|^2 / R^2)`` about the wide
    frame's centre ``c``, ``R`` its half-diagonal (so ``distortion`` is the
    fractional displacement at the corners).

    Attributes
    ----------
    scale_ratio : float
        Wide pixel size / narrow pixel size.
    rotation_deg : float
        Rotation of the wide frame's axes relative to the narrow's (degrees).
    flip : bool
        Mirror image (x reversed before the rotation).
    shift : (dx, dy)
        Offset (wide px) of the narrow centre's image from the wide centre.
    distortion : float
        Radial distortion coefficient (see above), 0 = none.
    narrow_shape, wide_shape : (ny, nx)
        Frame shapes.
    """

    scale_ratio: float
    rotation_deg: float
    flip: bool
    shift: tuple[float, float]
    distortion: float
    narrow_shape: tuple[int, int]
    wide_shape: tuple[int, int]

    @property
    def center(self) -> np.ndarray:
        """Distortion centre: the wide frame's centre (wide px)."""
        ny, nx = self.wide_shape
        return np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])

    @property
    def radius(self) -> float:
        """Distortion normalisation radius: the wide frame's half-diagonal (wide px)."""
        ny, nx = self.wide_shape
        return float(np.hypot(nx - 1, ny - 1) / 2.0)

    @cached_property
    def matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix of the similarity part, narrow -> wide (undistorted)."""
        a = np.radians(self.rotation_deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        lin = rot @ np.diag([-1.0 if self.flip else 1.0, 1.0]) / self.scale_ratio
        ny, nx = self.narrow_shape
        c_n = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
        t = self.center + np.asarray(self.shift, dtype=np.float64) - lin @ c_n
        m = np.eye(3)
        m[:2, :2] = lin
        m[:2, 2] = t
        return m

    @cached_property
    def inverse_matrix(self) -> np.ndarray:
        """3x3 matrix of the similarity part, wide (undistorted) -> narrow."""
        return np.linalg.inv(self.matrix)

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted -> distorted wide coordinates."""
        cx, cy = self.center
        dx, dy = np.asarray(x, dtype=np.float64) - cx, np.asarray(y, dtype=np.float64) - cy
        f = 1.0 + self.distortion * (dx * dx + dy * dy) / self.radius**2
        return cx + dx * f, cy + dy * f

    def undistort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distorted -> undistorted wide coordinates (Newton's method, ~1e-12 px)."""
        cx, cy = self.center
        dx, dy = np.asarray(x, dtype=np.float64) - cx, np.asarray(y, dtype=np.float64) - cy
        if self.distortion == 0:
            return cx + dx, cy + dy
        rho_d = np.hypot(dx, dy) / self.radius
        rho = rho_d.copy()
        k = self.distortion
        for _ in range(50):
            step = (rho + k * rho**3 - rho_d) / (1.0 + 3.0 * k * rho**2)
            rho -= step
            if np.all(np.abs(step) < 1e-15):
                break
        f = np.divide(rho, rho_d, out=np.ones_like(rho), where=rho_d > 0)
        return cx + dx * f, cy + dy * f

    def narrow_to_wide(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Narrow pixel coordinates -> wide pixel coordinates (any array shape)."""
        m = self.matrix
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return self.distort(
            m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
        )

    def wide_to_narrow(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wide pixel coordinates -> narrow pixel coordinates (any array shape)."""
        xu, yu = self.undistort(x, y)
        m = self.inverse_matrix
        return m[0, 0] * xu + m[0, 1] * yu + m[0, 2], m[1, 0] * xu + m[1, 1] * yu + m[1, 2]

    def footprint(self) -> np.ndarray:
        """Narrow frame corners (pixel centres; TL, TR, BR, BL) in wide px, shape (4, 2)."""
        ny, nx = self.narrow_shape
        cx = np.array([0.0, nx - 1.0, nx - 1.0, 0.0])
        cy = np.array([0.0, 0.0, ny - 1.0, ny - 1.0])
        return np.stack(self.narrow_to_wide(cx, cy), axis=1)


def _frame_outline(shape: tuple[int, int], n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Points along the edge of a frame (pixel-centre coordinates)."""
    ny, nx = shape
    t = np.linspace(0.0, 1.0, n)
    x = np.concatenate([t * (nx - 1), np.full(n, nx - 1.0), t * (nx - 1), np.zeros(n)])
    y = np.concatenate([np.zeros(n), t * (ny - 1), np.full(n, ny - 1.0), t * (ny - 1)])
    return x, y


@dataclass(eq=False)
class SimulatedPair:
    """A simulated narrow/wide pair and its truth; made by :func:`simulate_pair`.

    Images are ``(y, x)`` mono or ``(3, y, x)`` RGB float32 in ADU.

    Attributes
    ----------
    narrow, wide : ndarray
        The noisy images.
    narrow_header, wide_header : astropy.io.fits.Header
        With XPIXSZ / FOCALLEN giving pixel scales in the ratio ``scale_ratio``.
    narrow_signal, wide_signal : ndarray
        Noise-free stars + extended signal, no sky, no gradient.
    narrow_gradient, wide_gradient : ndarray
        The additive gradients ``G >= 0`` alone (no sky pedestal).
    narrow_sky, wide_sky : ndarray, shape (c,)
        Constant sky levels (ADU).
    narrow_noise_sigma, wide_noise_sigma : ndarray, shape (c,)
        Noise sigma at the mean background (sky + gradient): ``sqrt(mean / gain +
        read_noise^2)``.
    transform : PairTransform
        The exact narrow <-> wide pixel mapping.
    narrow_stars, wide_stars : StarList
        Stars whose centres lie in each frame; ``id`` indexes :attr:`catalog`, so
        common ids are the same star.
    catalog : StarCatalog
        All stars in sky (= narrow pixel) coordinates, flux in narrow ADU.
    nebula : Nebula
        The extended signal (surface brightness in narrow ADU per narrow px).
    wide_throughput : float
        Wide ADU per narrow ADU for the same flux (see the module docstring).
    seed : int
    """

    narrow: np.ndarray
    wide: np.ndarray
    narrow_header: fits.Header
    wide_header: fits.Header
    narrow_signal: np.ndarray
    wide_signal: np.ndarray
    narrow_gradient: np.ndarray
    wide_gradient: np.ndarray
    narrow_sky: np.ndarray
    wide_sky: np.ndarray
    narrow_noise_sigma: np.ndarray
    wide_noise_sigma: np.ndarray
    transform: PairTransform
    narrow_stars: StarList
    wide_stars: StarList
    catalog: StarCatalog
    nebula: Nebula
    wide_throughput: float
    seed: int

    @property
    def scale_ratio(self) -> float:
        return self.transform.scale_ratio

    @property
    def rotation_deg(self) -> float:
        return self.transform.rotation_deg

    @property
    def flip(self) -> bool:
        return self.transform.flip

    @property
    def footprint(self) -> np.ndarray:
        """Narrow frame corners in wide pixel coordinates, shape (4, 2)."""
        return self.transform.footprint()

    @property
    def footprint_fraction(self) -> float:
        """Area of the narrow field / area of the wide field (similarity part)."""
        (ny, nx), (wy, wx) = self.transform.narrow_shape, self.transform.wide_shape
        return ny * nx / self.scale_ratio**2 / (wy * wx)

    @property
    def narrow_background(self) -> np.ndarray:
        """``narrow_sky + narrow_gradient``."""
        return _add_per_channel(self.narrow_gradient, self.narrow_sky)

    @property
    def wide_background(self) -> np.ndarray:
        """``wide_sky + wide_gradient``."""
        return _add_per_channel(self.wide_gradient, self.wide_sky)


def _add_per_channel(image: np.ndarray, values: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image + np.float32(values[0])
    return image + np.asarray(values, dtype=np.float32)[:, None, None]


@dataclass(frozen=True)
class _Camera:
    """How one image of the pair sees the sky."""

    shape: tuple[int, int]
    psf: PSF
    to_sky: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
    pixel_area: float  # sky units (narrow px^2) per pixel
    throughput: float  # ADU per narrow ADU


def _observe(camera, catalog, star_xy, nebula, gradient, sky, detector, rng):
    """Render one image: ``(signal, gradient, noisy data, StarList)``, arrays (c, y, x).

    ``star_xy`` are the catalogue's positions in this image's pixels; ``detector`` is
    ``(gain, read_noise, saturation)``.
    """
    gain, read_noise, saturation = detector
    x, y = star_xy
    flux = catalog.flux * camera.throughput
    sb = camera.throughput * camera.pixel_area  # ADU per unit of the nebula's brightness
    step = coarse_step(nebula.min_sigma / np.sqrt(camera.pixel_area))
    signal = render_smooth(nebula.evaluate, camera.shape, step, to_sky=camera.to_sky)
    signal *= np.float32(sb)
    signal += render_stars(camera.shape, x, y, flux, camera.psf)
    grad = gradient.render()
    data = signal + grad
    data += np.asarray(sky, dtype=np.float32)[:, None, None]
    add_noise(data, gain, read_noise, rng)
    np.minimum(data, np.float32(saturation), out=data)

    ny, nx = camera.shape
    ids = np.nonzero((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))[0]
    level = gradient.at(x[ids], y[ids]).T + sky
    level += nebula.evaluate(catalog.x[ids], catalog.y[ids]).T * sb
    stars = observed_stars(x[ids], y[ids], flux[ids], camera.psf, level, saturation, ids)
    return signal, grad, data, stars


def simulate_pair(
    narrow_shape: tuple[int, int] = (600, 800),
    *,
    wide_shape: tuple[int, int] | None = None,
    scale_ratio: float = 3.0,
    rotation_deg: float = 20.0,
    shift: tuple[float, float] = (12.0, -8.0),
    flip: bool = False,
    distortion: float = 0.0,
    seed: int = 0,
    channels: int = 1,
    narrow_fwhm: float = 3.0,
    wide_fwhm: float = 2.0,
    psf: str = "moffat",
    moffat_beta: float = 4.0,
    star_density: float = 1.5e-3,
    star_flux_range: tuple[float, float] = (180.0, 1.8e6),
    star_slope: float = 0.35,
    n_bright: int | None = None,
    bright_flux_range: tuple[float, float] = (6.0e5, 1.2e7),
    nebula_amplitude: float = 300.0,
    nebula_blobs: int = 8,
    nebula_scales: tuple[float, float] = (0.03, 0.5),
    narrow_sky: float = 500.0,
    narrow_gradient: float | None = None,
    narrow_glow_px: float | None = None,
    wide_sky: float | None = None,
    wide_gradient: float | None = None,
    wide_throughput: float = 1.0,
    gain: float = 1.0,
    read_noise: float = 3.0,
    saturation: float = 65535.0,
    exposure: float = 300.0,
    pixel_size: float = 3.76,
    focal_length: float = 800.0,
    date_obs: str = "2024-03-15T22:00:00.000",
) -> SimulatedPair:
    """Simulate a narrow-field image and a wide-field image of the same sky.

    Parameters
    ----------
    narrow_shape : (ny, nx)
        Narrow image size.
    wide_shape : (ny, nx), optional
        Wide image size; default the same pixel dimensions as the narrow, which
        then covers ``scale_ratio^2`` times more sky.
    scale_ratio : float
        Wide pixel size over narrow pixel size (1.5 - 6 in practice).
    rotation_deg, shift, flip, distortion
        Geometry of the wide frame relative to the narrow: see
        :class:`PairTransform`. ``shift`` is in wide px.
    seed : int
        Seed of every random choice.
    channels : {1, 3}
        Mono or RGB.
    narrow_fwhm, wide_fwhm : float
        PSF FWHM of each image in its own pixels.
    psf, moffat_beta
        PSF profile ("moffat" or "gaussian") and Moffat exponent.
    star_density : float
        Stars per narrow px^2 of sky (ordinary stars, power-law fluxes in
        ``star_flux_range`` narrow ADU with magnitude slope ``star_slope``).
    star_flux_range, star_slope
        See :func:`~napari_nsg.synthetic.simulate_sequence`.
    n_bright : int, optional
        Extra bright stars (fluxes log-uniform in ``bright_flux_range``) over the
        whole wide field; default ``max(2, 1e-5 * sky area in narrow px^2)``.
    bright_flux_range : (min, max)
        Fluxes of the bright stars (narrow ADU).
    nebula_amplitude : float
        Peak surface brightness of the main object (narrow ADU per narrow px).
        It sits near the narrow field's centre with sigma 25 % of the narrow's
        short side.
    nebula_blobs : int
        Extra blobs per narrow-field area of sky, spread over the wide field,
        widths log-uniform in ``nebula_scales`` times the narrow's short side.
    nebula_scales : (min, max)
        See ``nebula_blobs``.
    narrow_sky : float
        Narrow sky level (ADU, neutral; channels get (1.05, 1, 0.8) of it).
    narrow_gradient : float, optional
        Peak-to-peak narrow gradient (tilt + curvature + glow), ADU; default
        ``0.5 * nebula_amplitude``.
    narrow_glow_px : float, optional
        Width (Gaussian sigma, narrow px) of the narrow gradient's light-pollution
        glow; default random, 0.4-0.9 of half the long side.
    wide_sky : float, optional
        Wide sky level; default ``narrow_sky * wide_throughput * scale_ratio^2``.
    wide_gradient : float, optional
        Peak-to-peak of the wide's gentle plane; default ``0.05 * wide_sky``.
    wide_throughput : float
        Wide ADU per narrow ADU of the same flux (module docstring).
    gain, read_noise, saturation : float
        Detector (e-/ADU, ADU, ADU), the same for both cameras.
    exposure : float
        EXPTIME of both images (header only).
    pixel_size, focal_length : float
        XPIXSZ (um) of both cameras and the narrow FOCALLEN (mm); the wide's
        FOCALLEN is ``focal_length / scale_ratio``.
    date_obs : str
        DATE-OBS of both images.

    Returns
    -------
    SimulatedPair

    Raises
    ------
    ValueError
        If the narrow field's footprint is not inside the wide frame (2 px margin).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if scale_ratio <= 0:
        raise ValueError(f"scale_ratio must be positive, not {scale_ratio!r}")
    if abs(distortion) > 0.1:
        raise ValueError(f"distortion must be within +-0.1 (mild), not {distortion!r}")
    narrow_shape = (int(narrow_shape[0]), int(narrow_shape[1]))
    wide_shape = narrow_shape if wide_shape is None else (int(wide_shape[0]), int(wide_shape[1]))
    s = float(scale_ratio)
    tf = PairTransform(
        scale_ratio=s,
        rotation_deg=float(rotation_deg),
        flip=bool(flip),
        shift=(float(shift[0]), float(shift[1])),
        distortion=float(distortion),
        narrow_shape=narrow_shape,
        wide_shape=wide_shape,
    )
    wx, wy = tf.narrow_to_wide(*_frame_outline(narrow_shape))
    margin = 2.0
    if (
        wx.min() < margin
        or wy.min() < margin
        or wx.max() > wide_shape[1] - 1 - margin
        or wy.max() > wide_shape[0] - 1 - margin
    ):
        raise ValueError(
            "the narrow field's footprint is not inside the wide frame "
            f"(x {wx.min():.1f}..{wx.max():.1f}, y {wy.min():.1f}..{wy.max():.1f} in a "
            f"{wide_shape[1]}x{wide_shape[0]} frame): reduce shift or rotation, or enlarge wide_shape"
        )

    # the sky region seen by the wide frame, in sky (= narrow px) coordinates
    sx, sy = tf.wide_to_narrow(*_frame_outline(wide_shape))
    pad = 4.0 * s
    bounds = (sx.min() - pad, sx.max() + pad, sy.min() - pad, sy.max() + pad)
    sky_area = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2])
    catalog = random_catalog(
        stream(seed, "pair", "stars"),
        bounds,
        n_stars=round(star_density * sky_area),
        flux_range=star_flux_range,
        slope=star_slope,
        n_bright=int(max(2, round(1e-5 * sky_area)) if n_bright is None else n_bright),
        bright_range=bright_flux_range,
        channels=channels,
    )
    ny, nx = narrow_shape
    short = min(ny, nx)
    rng = stream(seed, "pair", "nebula")
    nebula = random_nebula(
        rng,
        bounds,
        n_blobs=round(nebula_blobs * sky_area / (ny * nx)),
        sigma_range=(nebula_scales[0] * short, nebula_scales[1] * short),
        amplitude=nebula_amplitude,
        channels=channels,
        main_sigma=0.25 * short,
        main_center=(
            (nx - 1) / 2 + rng.normal(0, 0.1 * nx),
            (ny - 1) / 2 + rng.normal(0, 0.1 * ny),
        ),
    )
    colour = np.array([1.05, 1.0, 0.8]) if channels == 3 else np.ones(1)
    n_sky = narrow_sky * colour
    w_sky = (narrow_sky * wide_throughput * s * s if wide_sky is None else wide_sky) * colour
    n_amp = 0.5 * nebula_amplitude if narrow_gradient is None else narrow_gradient
    w_amp = (
        0.05 * float(w_sky[-1 if channels == 1 else 1]) if wide_gradient is None else wide_gradient
    )
    grad_rng = stream(seed, "pair", "gradients")
    n_model = random_gradient(grad_rng, narrow_shape, n_amp, channels=channels)
    if narrow_glow_px is not None:
        half = max(narrow_shape[0] - 1, narrow_shape[1] - 1, 1) / 2.0
        u0, v0, _, strength = n_model.glow
        n_model = replace(n_model, glow=(u0, v0, float(narrow_glow_px) / half, strength))
    w_model = random_gradient(grad_rng, wide_shape, w_amp, mix=(1.0, 0.0, 0.0), channels=channels)

    detector = (gain, read_noise, saturation)
    narrow_cam = _Camera(narrow_shape, PSF(float(narrow_fwhm), psf, moffat_beta), None, 1.0, 1.0)
    n_sig, n_grad, n_data, n_stars = _observe(
        narrow_cam, catalog, (catalog.x, catalog.y), nebula, n_model, n_sky, detector,
        stream(seed, "pair", "noise", 0),
    )  # fmt: skip
    wide_cam = _Camera(
        wide_shape, PSF(float(wide_fwhm), psf, moffat_beta), tf.wide_to_narrow, s * s,
        float(wide_throughput),
    )  # fmt: skip
    w_sig, w_grad, w_data, w_stars = _observe(
        wide_cam, catalog, tf.narrow_to_wide(catalog.x, catalog.y), nebula, w_model, w_sky,
        detector, stream(seed, "pair", "noise", 1),
    )  # fmt: skip

    def layout(cube):
        return cube[0] if channels == 1 else cube

    def header(focal):
        return frame_header(
            exposure=exposure,
            date_obs=date_obs,
            altitude=None,
            filter_name="L" if channels == 1 else None,
            pixel_size=pixel_size,
            focal_length=focal,
            gain=gain,
            extra={
                "SIMSEED": (int(seed), "napari-nsg simulator seed"),
                "PIXSCALE": (round(pixel_scale_arcsec(pixel_size, focal), 6), "[arcsec/px]"),
            },
        )

    n_sigma = noise_sigma(n_sky + n_model.mean(), gain, read_noise)
    w_sigma = noise_sigma(w_sky + w_model.mean(), gain, read_noise)
    return SimulatedPair(
        narrow=layout(n_data),
        wide=layout(w_data),
        narrow_header=header(focal_length),
        wide_header=header(focal_length / s),
        narrow_signal=layout(n_sig),
        wide_signal=layout(w_sig),
        narrow_gradient=layout(n_grad),
        wide_gradient=layout(w_grad),
        narrow_sky=n_sky,
        wide_sky=w_sky,
        narrow_noise_sigma=n_sigma,
        wide_noise_sigma=w_sigma,
        transform=tf,
        narrow_stars=n_stars,
        wide_stars=w_stars,
        catalog=catalog,
        nebula=nebula,
        wide_throughput=float(wide_throughput),
        seed=int(seed),
    )


#: The sample pair's settings (``napari-nsg demo``'s pair): an 800 x 600 narrow field, a
#: wide field of the same size with 3x larger pixels rotated 25 deg, low noise (gain 25)
#: and a gentle wide gradient (1 % of the wide sky). Enough stars in common to register;
#: MSGR leaves about 0.03 of the narrow gradient (automatic N, seed 1).
SAMPLE_PAIR = {
    "narrow_shape": (600, 800),
    "scale_ratio": 3.0,
    "rotation_deg": 25.0,
    "gain": 25.0,
    "wide_gradient": 0.01 * 500.0 * 3.0**2,
}


def sample_pair(seed: int = 1, **changes) -> SimulatedPair:
    """The napari sample pair: :data:`SAMPLE_PAIR` (mono, ~0.4 s to simulate).

    ``changes`` override any of :func:`simulate_pair`'s arguments.
    """
    return simulate_pair(**{**SAMPLE_PAIR, "seed": seed, **changes})


#: Ranges of :func:`field_pair_settings` (issue 12: an independent pair, ratio 3 rotated
#: 17 deg, 900x1200, a tilt + glow gradient of ~140 ADU on 500 ADU sky, faint nebulosity
#: filling the narrow field, the wide with its own ~1 % gradient, left 0.18 of the gradient).
FIELD_PAIR_SHAPES = ((900, 1200), (600, 800))
FIELD_PAIR_RATIOS = (1.5, 6.0)
FIELD_PAIR_GLOW_PX = (150.0, 350.0)
FIELD_PAIR_NARROW_GRADIENT = (100.0, 200.0)
FIELD_PAIR_WIDE_GRADIENT = (0.005, 0.02)  # of the wide sky
FIELD_PAIR_NEBULA_PEAK = (15.0, 150.0)  # ADU per narrow px
#: Largest nebula blob, in units of the narrow's short side (> 1: larger than the field).
FIELD_PAIR_NEBULA_LARGEST = (0.8, 2.5)
FIELD_PAIR_GAIN = (10.0, 30.0)  # e-/ADU: stacked-like noise
FIELD_PAIR_SKY = 500.0
#: Wide frame side beyond the narrow footprint's diagonal (wide px).
FIELD_PAIR_WIDE_MARGIN = 32


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def field_pair_settings(seed: int, **fixed) -> dict:
    """Random :func:`simulate_pair` arguments for a pair with field-filling nebulosity.

    Drawn from ``seed`` (independently of the pair's own random streams): the
    narrow shape from :data:`FIELD_PAIR_SHAPES`; a scale ratio log-uniform in
    :data:`FIELD_PAIR_RATIOS`; any rotation and a flip half of the time; faint
    nebulosity (main object and blobs of peak :data:`FIELD_PAIR_NEBULA_PEAK`
    ADU, blob sizes from 5 % of the short side up to
    :data:`FIELD_PAIR_NEBULA_LARGEST` times it); a narrow gradient of
    :data:`FIELD_PAIR_NARROW_GRADIENT` ADU peak-to-peak (tilt, curvature and a
    glow of sigma :data:`FIELD_PAIR_GLOW_PX`) on a 500 ADU sky; the wide
    image's own plane of :data:`FIELD_PAIR_WIDE_GRADIENT` of its sky. ``fixed``
    overrides any argument (e.g. ``scale_ratio=3.0``).
    """
    rng = stream(seed, "pair", "field-settings")
    shape = FIELD_PAIR_SHAPES[int(rng.integers(len(FIELD_PAIR_SHAPES)))]
    ratio = _log_uniform(rng, FIELD_PAIR_RATIOS)
    settings = {
        "narrow_shape": shape,
        "scale_ratio": round(ratio, 3),
        "rotation_deg": float(rng.uniform(-180.0, 180.0)),
        "flip": bool(rng.integers(2)),
        "shift": (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5))),
        "seed": int(seed),
        "gain": float(rng.uniform(*FIELD_PAIR_GAIN)),
        "nebula_amplitude": _log_uniform(rng, FIELD_PAIR_NEBULA_PEAK),
        "nebula_scales": (0.05, float(rng.uniform(*FIELD_PAIR_NEBULA_LARGEST))),
        "narrow_sky": FIELD_PAIR_SKY,
        "narrow_gradient": float(rng.uniform(*FIELD_PAIR_NARROW_GRADIENT)),
        "narrow_glow_px": float(rng.uniform(*FIELD_PAIR_GLOW_PX)),
    }
    wide_fraction = float(rng.uniform(*FIELD_PAIR_WIDE_GRADIENT))
    settings.update(fixed)
    ratio = float(settings["scale_ratio"])
    if "wide_shape" not in fixed:  # the footprint must fit at any rotation
        ny, nx = settings["narrow_shape"]
        side = int(np.ceil(np.hypot(ny, nx) / ratio)) + FIELD_PAIR_WIDE_MARGIN
        settings["wide_shape"] = (max(ny, side), max(nx, side))
    settings.setdefault("wide_gradient", wide_fraction * settings["narrow_sky"] * ratio**2)
    return settings


def field_pair(seed: int, **fixed) -> SimulatedPair:
    """A pair with field-filling faint nebulosity (:func:`field_pair_settings`)."""
    return simulate_pair(**field_pair_settings(seed, **fixed))
