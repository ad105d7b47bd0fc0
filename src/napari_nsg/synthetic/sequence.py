"""Registered sub-frame sequences of one field, with exact truth.

See :mod:`napari_nsg.synthetic.truth` for the model and the truth definitions
and ``docs/simulator.md`` for examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._fast import add_scaled
from ._rng import stream
from .background import GradientModel, random_gradient
from .bayer import cfa_index, mosaic
from .borders import Border, random_border
from .headers import airmass, frame_header, iso_time
from .nebula import Nebula, coarse_step, random_nebula, render_smooth
from .noise import add_noise, noise_sigma, sigma_map
from .psf import PSF, render_stars
from .stars import StarCatalog, StarList, observed_stars, random_catalog
from .truth import FrameTruth

__all__ = [
    "SimulatedFrame",
    "SimulatedSequence",
    "iter_sequence",
    "read_truth",
    "sample_sequence",
    "simulate_sequence",
    "write_sequence",
]

#: Default sky level in ADU per second of exposure (before the per-frame factor).
SKY_RATE = 1000.0 / 60.0
#: Seconds between the end of one exposure and the start of the next.
FRAME_GAP = 5.0
TRUTH_FILE = "truth.json"


@dataclass(frozen=True)
class _Plan:
    """Everything random about one frame, drawn at construction (cheap)."""

    truth: FrameTruth
    psf: PSF
    gradient: GradientModel
    border: Border
    sky: np.ndarray  # (c,)
    signal_factor: np.ndarray  # (c,) T_k * t_k


@dataclass(eq=False)
class SimulatedFrame:
    """One rendered frame and its truth.

    Attributes
    ----------
    index : int
        Position in the sequence.
    data : ndarray, float32
        The frame in ADU: ``(y, x)`` mono or Bayer mosaic, ``(3, y, x)`` RGB.
        Pixels outside :attr:`valid` are exactly 0; values are clipped at the
        saturation level.
    header : astropy.io.fits.Header
        Capture keywords (EXPTIME, DATE-OBS, AIRMASS, ...).
    truth : FrameTruth
        Scalar truth (scale, transmission, sky, noise sigma, FWHM, ...).
    valid : ndarray of bool, shape (y, x)
        Where the frame has data (False in the zero borders).
    stars : StarList
        Stars as they appear in this frame.

    The truth images (:meth:`signal`, :meth:`background`, ...) have the layout
    of :attr:`data`, are not masked by the borders and are computed on first use
    (or kept from rendering when the frame was made with ``keep_truth=True``).
    """

    index: int
    data: np.ndarray
    header: fits.Header
    truth: FrameTruth
    valid: np.ndarray
    stars: StarList
    sequence: SimulatedSequence = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def _get(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = getattr(self.sequence, name)(self.index)
        return self._cache[name]

    def signal(self) -> np.ndarray:
        """Noise-free sky signal ``T_k t_k S_k`` (stars + extended signal), ADU."""
        return self._get("signal")

    def background(self) -> np.ndarray:
        """Additive background ``B_k = sky_k + G_k``, ADU."""
        return self._get("background")

    def gradient(self) -> np.ndarray:
        """The gradient ``G_k`` alone (``B_k - sky_k``), ADU."""
        return self.sequence.gradient(self.index)

    def relative_gradient(self) -> np.ndarray:
        """``scale_k * B_k - B_r``: what NSG must subtract after scaling."""
        return self.sequence.relative_gradient(self.index)

    def noise_free(self) -> np.ndarray:
        """``signal + background`` (before noise and saturation)."""
        return self.signal() + self.background()

    def noise_sigma_map(self) -> np.ndarray:
        """Per-pixel noise sigma ``sqrt(noise_free / gain + read_noise^2)``, ADU."""
        seq = self.sequence
        return sigma_map(self.noise_free(), seq.gain, seq.read_noise)


class SimulatedSequence:
    """A simulated sequence of registered sub-frames of one field; made by
    :func:`simulate_sequence`.

    Frames are rendered on demand (:meth:`frame`, :meth:`iter_frames`) and are a
    pure function of the arguments and the seed. Per-frame truth images are
    methods taking the frame index, computed on demand, in the layout of the
    frame data.

    Attributes
    ----------
    n_frames, shape, channels, reference, seed
        As given (``channels`` is 3 for Bayer sequences).
    bayer : str or None
        CFA pattern of the frames, or None.
    gain, read_noise, saturation : float
        Detector: e-/ADU, ADU, ADU.
    truth : list of FrameTruth
        Scalar truth per frame.
    catalog : StarCatalog
        The stars, flux in ADU per second at transmission 1 (``S``'s stars).
    nebula : Nebula or None
        The extended signal's model (surface brightness in ADU/s per px).
    params : dict
        The arguments of :func:`simulate_sequence` (JSON-ready).
    """

    def __init__(
        self,
        *,
        plans: list[_Plan],
        shape: tuple[int, int],
        channels: int,
        reference: int,
        seed: int,
        bayer: str | None,
        catalog: StarCatalog,
        nebula: Nebula | None,
        gain: float,
        read_noise: float,
        saturation: float,
        noise_keywords: bool,
        header_info: dict,
        params: dict,
    ) -> None:
        self._plans = plans
        self.n_frames = len(plans)
        self.shape = shape
        self.channels = channels
        self.reference = reference
        self.seed = seed
        self.bayer = bayer
        self.catalog = catalog
        self.nebula = nebula
        self.gain = gain
        self.read_noise = read_noise
        self.saturation = saturation
        self.noise_keywords = noise_keywords
        self._header_info = header_info
        self.params = params
        self.truth = [p.truth for p in plans]

    def __repr__(self) -> str:
        kind = f"Bayer {self.bayer}" if self.bayer else ("RGB" if self.channels == 3 else "mono")
        return (
            f"SimulatedSequence({self.n_frames} frames, {self.shape[0]}x{self.shape[1]} {kind}, "
            f"reference={self.reference}, seed={self.seed})"
        )

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, k: int) -> SimulatedFrame:
        return self.frame(k)

    def __iter__(self) -> Iterator[SimulatedFrame]:
        return self.iter_frames()

    # ---------------------------------------------------------------- scalars
    @property
    def scale(self) -> np.ndarray:
        """True scale factors, shape ``(n_frames, c)``."""
        return np.array([t.scale for t in self.truth])

    @property
    def transmission(self) -> np.ndarray:
        """True transmissions relative to the reference, shape ``(n_frames, c)``."""
        return np.array([t.transmission for t in self.truth])

    @property
    def noise_sigma(self) -> np.ndarray:
        """True background noise sigmas (ADU), shape ``(n_frames, c)``."""
        return np.array([t.noise_sigma for t in self.truth])

    @cached_property
    def cfa(self) -> np.ndarray | None:
        """Channel index (0 R, 1 G, 2 B) of each pixel for Bayer frames, else None."""
        return None if self.bayer is None else cfa_index(self.bayer, self.shape)

    def header(self, k: int) -> fits.Header:
        """FITS header of frame ``k``."""
        t = self.truth[k]
        info = self._header_info
        return frame_header(
            exposure=t.exposure,
            date_obs=t.date_obs,
            altitude=t.altitude,
            filter_name=info["filter_name"],
            pixel_size=info["pixel_size"],
            focal_length=info["focal_length"],
            gain=self.gain,
            bayer=self.bayer,
            noise=t.noise_sigma if self.noise_keywords else None,
            extra={
                "SIMSEED": (self.seed, "napari-nsg simulator seed"),
                "SIMFRAME": (k, "frame index in the simulated sequence"),
            },
        )

    # ----------------------------------------------------------- truth images
    def _layout(self, cube: np.ndarray) -> np.ndarray:
        """(c, y, x) -> the frame layout: (y, x) mono, (3, y, x) RGB, (y, x) mosaic."""
        if self.bayer is not None:
            return mosaic(cube, self.bayer)
        return cube[0] if self.channels == 1 else cube

    @cached_property
    def _nebula_unit(self) -> np.ndarray | None:
        """Extended signal per unit ``T t`` (ADU/s per px), (c, y, x); unshifted."""
        if self.nebula is None:
            return None
        step = coarse_step(self.nebula.min_sigma)
        return render_smooth(self.nebula.evaluate, self.shape, step)

    def _nebula_for(self, k: int) -> np.ndarray | None:
        dx, dy = self.truth[k].shift
        if self.nebula is None or (dx == 0 and dy == 0):
            return self._nebula_unit
        step = coarse_step(self.nebula.min_sigma)
        return render_smooth(
            self.nebula.evaluate, self.shape, step, to_sky=lambda x, y: (x - dx, y - dy)
        )

    def _signal_cube(self, k: int) -> np.ndarray:
        plan = self._plans[k]
        dx, dy = plan.truth.shift
        factor = plan.signal_factor
        threshold = max(1e-3, 0.01 * float(plan.truth.noise_sigma.min()))
        cube = render_stars(
            self.shape,
            self.catalog.x + dx,
            self.catalog.y + dy,
            self.catalog.flux * factor[None, :],
            plan.psf,
            threshold=threshold,
        )
        if cube.ndim == 2:
            cube = cube[None]
        neb = self._nebula_for(k)
        if neb is not None:
            for c in range(self.channels):
                add_scaled(cube[c], neb[c], factor[c])
        return cube

    def _background_cube(self, k: int) -> np.ndarray:
        plan = self._plans[k]
        cube = plan.gradient.render()
        for c in range(self.channels):
            cube[c] += np.float32(plan.sky[c])
        return cube

    def signal(self, k: int) -> np.ndarray:
        """Noise-free signal ``T_k t_k S_k`` of frame ``k`` (ADU, frame layout, float32)."""
        return self._layout(self._signal_cube(k))

    def background(self, k: int) -> np.ndarray:
        """Background ``B_k = sky_k + G_k`` of frame ``k`` (ADU, frame layout, float32)."""
        return self._layout(self._background_cube(k))

    def gradient(self, k: int) -> np.ndarray:
        """Gradient ``G_k`` of frame ``k`` alone (ADU, frame layout, float32)."""
        return self._layout(self._plans[k].gradient.render())

    def relative_gradient(self, k: int) -> np.ndarray:
        """``scale_k * B_k - B_r`` (ADU, frame layout, float32); zero for the reference."""
        scale = self.truth[k].scale
        cube = self._background_cube(k)
        ref = self._background_cube(self.reference) if k != self.reference else cube.copy()
        for c in range(self.channels):
            cube[c] *= np.float32(scale[c])
            cube[c] -= ref[c]
        return self._layout(cube)

    def noise_free(self, k: int) -> np.ndarray:
        """``signal + background`` of frame ``k`` (before noise and saturation)."""
        cube = self._signal_cube(k)
        cube += self._background_cube(k)
        return self._layout(cube)

    def reference_image(self) -> np.ndarray:
        """The reference's noise-free image ``T_r t_r S_r + B_r``."""
        return self.noise_free(self.reference)

    def noise_sigma_map(self, k: int) -> np.ndarray:
        """Per-pixel noise sigma of frame ``k``: ``sqrt(noise_free / gain + read_noise^2)``."""
        return sigma_map(self.noise_free(k), self.gain, self.read_noise)

    def valid_mask(self, k: int) -> np.ndarray:
        """Where frame ``k`` has data (bool, ``(y, x)``); False in its zero borders."""
        return self._plans[k].border.mask(self.shape)

    def border(self, k: int) -> Border:
        """The zero-border geometry of frame ``k``."""
        return self._plans[k].border

    def stars(self, k: int) -> StarList:
        """The catalogue's stars as they appear in frame ``k``.

        ``flux = T_k t_k * catalogue flux``; ``saturated`` compares the star's
        noise-free peak pixel plus the background and extended signal at its
        centre (neighbouring stars ignored) with the saturation level.
        """
        plan = self._plans[k]
        dx, dy = plan.truth.shift
        x = self.catalog.x + dx
        y = self.catalog.y + dy
        flux = self.catalog.flux * plan.signal_factor[None, :]
        level = plan.gradient.at(x, y).T + plan.sky[None, :]
        if self.nebula is not None:
            level += self.nebula.evaluate(self.catalog.x, self.catalog.y).T * plan.signal_factor
        return observed_stars(x, y, flux, plan.psf, level, self.saturation, np.arange(len(x)))

    # ------------------------------------------------------------- rendering
    def frame(self, k: int, *, keep_truth: bool = True) -> SimulatedFrame:
        """Render frame ``k``.

        Parameters
        ----------
        k : int
            Frame index (negative counts from the end).
        keep_truth : bool
            Keep the signal and background images computed while rendering in the
            returned frame (faster truth access, more memory).
        """
        if not -self.n_frames <= k < self.n_frames:
            raise IndexError(f"frame {k} out of range for {self.n_frames} frames")
        k = int(k) % self.n_frames
        cube = self._signal_cube(k)
        back = self._background_cube(k)
        cache = {}
        if keep_truth:
            cache = {"signal": self._layout(cube.copy()), "background": self._layout(back.copy())}
        cube += back
        del back
        data = self._layout(cube)
        del cube
        add_noise(data, self.gain, self.read_noise, stream(self.seed, "noise", k))
        np.minimum(data, np.float32(self.saturation), out=data)
        valid = self.valid_mask(k)
        if not valid.all():
            data[..., ~valid] = 0.0
        hole = (data == 0) & valid  # a real value of exactly 0 would read as "no data"
        if hole.any():
            data[hole] = np.float32(1e-3)
        return SimulatedFrame(
            index=k,
            data=data,
            header=self.header(k),
            truth=self.truth[k],
            valid=valid,
            stars=self.stars(k),
            sequence=self,
            _cache=cache,
        )

    def iter_frames(self, *, keep_truth: bool = False) -> Iterator[SimulatedFrame]:
        """Yield the frames one at a time (only one is held in memory)."""
        for k in range(self.n_frames):
            yield self.frame(k, keep_truth=keep_truth)

    def all_data(self) -> np.ndarray:
        """All frames stacked: ``(n_frames, *frame_shape)`` float32 (memory heavy)."""
        first = self.frame(0, keep_truth=False).data
        out = np.empty((self.n_frames, *first.shape), dtype=np.float32)
        out[0] = first
        for k in range(1, self.n_frames):
            out[k] = self.frame(k, keep_truth=False).data
        return out

    # --------------------------------------------------------------- writing
    def truth_dict(self, files: Sequence[str] | None = None) -> dict:
        """The scalar truth as a JSON-ready dictionary (what ``truth.json`` holds)."""
        frames = []
        for k, t in enumerate(self.truth):
            row = t.to_dict()
            if files is not None:
                row["file"] = files[k]
            row["border"] = self._plans[k].border.to_dict()
            frames.append(row)
        return {
            "generator": "napari_nsg.synthetic.simulate_sequence",
            "reference": self.reference,
            "reference_file": None if files is None else files[self.reference],
            "n_frames": self.n_frames,
            "shape": list(self.shape),
            "channels": self.channels,
            "bayer": self.bayer,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "saturation": self.saturation,
            "params": self.params,
            "frames": frames,
        }

    def write(
        self, out_dir: str | Path, *, prefix: str = "frame", overwrite: bool = False
    ) -> list[Path]:
        """Write ``<prefix>_NNN.fits`` (one frame at a time) and ``truth.json``.

        Parameters
        ----------
        out_dir : path-like
            Folder, created if missing.
        prefix : str
            File name prefix; ``NNN`` is the 0-based frame index, 3 digits or more.
        overwrite : bool
            Replace existing files (else :class:`napari_nsg.io.OutputExistsError`).

        Returns
        -------
        list of pathlib.Path
            The FITS files in frame order (``truth.json`` is next to them).
        """
        from napari_nsg.io import atomic_write_text, write_frame

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        digits = max(3, len(str(self.n_frames - 1)))
        paths = [out_dir / f"{prefix}_{k:0{digits}d}.fits" for k in range(self.n_frames)]
        for frame, path in zip(self.iter_frames(), paths, strict=True):
            write_frame(path, frame.data, header=frame.header, overwrite=overwrite)
        text = json.dumps(self.truth_dict([p.name for p in paths]), indent=2)
        atomic_write_text(out_dir / TRUTH_FILE, text + "\n", overwrite=overwrite)
        return paths


# ------------------------------------------------------------------ factory
def _json_ready(arguments: dict) -> dict:
    """The arguments as plain JSON values (arrays and tuples become lists)."""
    return json.loads(json.dumps(arguments, default=lambda v: np.asarray(v).tolist()))


def _per_frame(value, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a number or {n} values (one per frame), not {arr.shape}")
    return arr


def _transmissions(value, draws: np.ndarray, reference: int, channels: int, extinction):
    n = len(draws)
    if value is None:
        t = draws.copy()
        t[reference] = 1.0
        ext = np.asarray(extinction, dtype=np.float64) if channels == 3 else np.ones(1)
        return t[:, None] ** ext[None, :]
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (n,):
        arr = np.repeat(arr[:, None], channels, axis=1)
    if arr.shape != (n, channels):
        raise ValueError(
            f"transmission must have {n} values or shape ({n}, {channels}), not {arr.shape}"
        )
    if np.any(arr <= 0):
        raise ValueError("transmission values must be positive")
    return arr


def simulate_sequence(
    n_frames: int = 10,
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    channels: int = 1,
    reference: int = 0,
    transmission: Sequence[float] | np.ndarray | None = None,
    exposure: float | Sequence[float] = 60.0,
    sky: float | Sequence[float] | None = None,
    gradient: float | Sequence[float] | None = None,
    gradient_mix: tuple[float, float, float] = (1.0, 0.5, 1.0),
    fwhm: float | Sequence[float] | None = None,
    fwhm_range: tuple[float, float] = (2.5, 4.0),
    psf: str = "moffat",
    moffat_beta: float = 4.0,
    star_density: float = 2.5e-3,
    star_flux_range: tuple[float, float] = (3.0, 3.0e4),
    star_slope: float = 0.35,
    n_bright: int | None = None,
    bright_flux_range: tuple[float, float] = (1.0e4, 2.0e5),
    nebula: bool = False,
    nebula_amplitude: float = 8.0,
    nebula_blobs: int = 12,
    gain: float = 1.0,
    read_noise: float = 3.0,
    saturation: float = 65535.0,
    jitter: float = 0.0,
    border: float | Sequence[float] = 0.0,
    bayer: str | None = None,
    noise_keywords: bool = False,
    filter_name: str | None = "L",
    pixel_size: float = 3.76,
    focal_length: float = 800.0,
    start_time: str = "2024-03-15T21:00:00",
    altitude_start: float = 40.0,
    altitude_rate: float = 10.0,
    extinction: tuple[float, float, float] = (0.85, 1.0, 1.2),
    sky_colour: tuple[float, float, float] = (1.05, 1.0, 0.8),
) -> SimulatedSequence:
    """Simulate registered sub-frames of one star field with known truth.

    Frame ``k`` is ``T_k t_k S_k + sky_k + G_k + noise_k`` (see
    :mod:`napari_nsg.synthetic.truth` for the exact truth definitions). Values
    drawn at random come from streams that depend only on ``seed`` and the frame
    index, so frame ``k`` does not depend on ``n_frames`` (given the same
    ``reference`` and arguments).

    Parameters
    ----------
    n_frames : int
        Number of frames.
    shape : (ny, nx)
        Frame size in pixels.
    seed : int
        Seed of every random choice (non-negative).
    channels : {1, 3}
        Mono or RGB (``(3, y, x)`` frames). Forced to 3 with ``bayer``.
    reference : int
        Index of the reference frame (scale 1, no border, no jitter).
    transmission : array, optional
        Absolute transmission ``T_k``: ``n_frames`` values (all channels alike) or
        ``(n_frames, c)``. Default: uniform in [0.6, 1] with 1 for the
        reference, and in colour ``T_k,c = T_k ** extinction[c]`` (blue dimmed
        more).
    exposure : float or array
        Exposure time ``t_k`` in seconds.
    sky : float or array, optional
        Neutral sky level ``sky_k`` in ADU; channel ``c`` gets ``sky_k *
        sky_colour[c]``. Default ``1000 ADU * t_k / 60 s * U(0.8, 1.4)``.
    gradient : float or array, optional
        Peak-to-peak amplitude of the gradient ``G_k`` in ADU. Default
        ``U(0.05, 0.3) * sky_k``. Give 0 for no gradient.
    gradient_mix : (tilt, curvature, glow)
        Relative weights of the gradient's plane, quadratic and light-dome parts
        (random orientation per frame; the dome sits near the same corner in
        all frames).
    fwhm : float or array, optional
        PSF FWHM per frame (px). Default uniform in ``fwhm_range``.
    fwhm_range : (min, max)
        Range of the default FWHM.
    psf : {"moffat", "gaussian"}
        PSF profile; ``moffat_beta`` is the Moffat exponent.
    moffat_beta : float
        Moffat exponent.
    star_density : float
        Ordinary stars per px^2 (uniform positions inside the frame).
    star_flux_range : (min, max)
        Flux range of the ordinary stars, ADU/s at T = 1 (green channel in colour),
        with ``dN/dmag ~ 10^(star_slope mag)``.
    star_slope : float
        Slope of the magnitude distribution (dex per magnitude).
    n_bright : int, optional
        Extra bright stars with fluxes log-uniform in ``bright_flux_range``;
        default ``max(2, 1e-5 * ny * nx)``. Most of them saturate.
    bright_flux_range : (min, max)
        Flux range of the bright stars (ADU/s).
    nebula : bool
        Add extended signal: a main elliptical object at the centre (sigma 15 %
        of the short side) and ``nebula_blobs`` blobs of sigma 2-25 % of it.
    nebula_amplitude : float
        Peak surface brightness of the main object (ADU/s per px).
    nebula_blobs : int
        Number of extra blobs.
    gain : float
        e-/ADU; shot-noise variance is ``level / gain`` (ADU^2).
    read_noise : float
        Read noise in ADU.
    saturation : float
        Noisy values are clipped at this level.
    jitter : float
        Standard deviation (px) of a per-frame sub-pixel shift of the sky
        content (stars and nebula; not the gradient), 0 = perfectly registered.
    border : float or array
        Maximum width (px) of random zero strips / wedges on one to four edges of
        each non-reference frame; per-frame values apply to every frame
        (reference included). 0 = none.
    bayer : {"RGGB", "BGGR", "GRBG", "GBRG"}, optional
        Write a CFA mosaic ``(y, x)`` with BAYERPAT instead of RGB.
    noise_keywords : bool
        Write the true noise sigmas as NOISE00.. (ADU) and NOISEA00.. = SIMULATED.
    filter_name : str or None
        FILTER keyword.
    pixel_size, focal_length : float
        XPIXSZ (um) and FOCALLEN (mm).
    start_time : str
        DATE-OBS of the first frame (UTC); frames follow each other with
        exposure + 5 s.
    altitude_start, altitude_rate : float
        Target altitude (deg) at the first frame and its change in deg/hour
        (capped at 89 deg); AIRMASS follows (Kasten & Young).
    extinction : (R, G, B)
        Exponents of the default colour transmissions.
    sky_colour : (R, G, B)
        Channel multipliers of the sky level.

    Returns
    -------
    SimulatedSequence
    """
    params = _json_ready(locals())
    n = int(n_frames)
    if n < 1:
        raise ValueError(f"n_frames must be >= 1, not {n_frames!r}")
    ny, nx = (int(s) for s in shape)
    if ny < 8 or nx < 8:
        raise ValueError(f"shape must be at least 8 x 8, not {shape!r}")
    if bayer is not None:
        cfa_index(bayer, (2, 2))  # validates the pattern
        bayer = bayer.upper()
        channels = 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if not -n <= reference < n:
        raise ValueError(f"reference {reference} out of range for {n} frames")
    reference = int(reference) % n
    if gain <= 0 or read_noise < 0:
        raise ValueError("gain must be positive and read_noise non-negative")
    # per-frame random draws: one stream per frame, always drawn in the same order
    draws = []
    for k in range(n):
        rng = stream(seed, "frame", k)
        draws.append(
            {
                "transmission": rng.uniform(0.6, 1.0),
                "sky": rng.uniform(0.8, 1.4),
                "gradient": rng.uniform(0.05, 0.3),
                "fwhm": rng.uniform(*fwhm_range),
                "shift": rng.normal(0.0, 1.0, 2),
                "rng": rng,
            }
        )
    t_exp = _per_frame(exposure, n, "exposure")
    if np.any(t_exp <= 0):
        raise ValueError("exposure times must be positive")
    trans = _transmissions(
        transmission, np.array([d["transmission"] for d in draws]), reference, channels, extinction
    )
    sky_k = _per_frame(sky, n, "sky")
    if sky_k is None:
        sky_k = SKY_RATE * t_exp * np.array([d["sky"] for d in draws])
    grad_k = _per_frame(gradient, n, "gradient")
    if grad_k is None:
        grad_k = sky_k * np.array([d["gradient"] for d in draws])
    fwhm_k = _per_frame(fwhm, n, "fwhm")
    if fwhm_k is None:
        fwhm_k = np.array([d["fwhm"] for d in draws])
    border_k = _per_frame(border, n, "border")
    if np.ndim(border) == 0:
        border_k[reference] = 0.0
    colour = np.asarray(sky_colour, dtype=np.float64) if channels == 3 else np.ones(1)

    scene = stream(seed, "scene")
    glow_corner = (int(scene.choice([-1, 1])), int(scene.choice([-1, 1])))
    area = ny * nx
    catalog = random_catalog(
        stream(seed, "stars"),
        (0.0, nx - 1.0, 0.0, ny - 1.0),
        n_stars=round(star_density * area),
        flux_range=star_flux_range,
        slope=star_slope,
        n_bright=int(max(2, round(1e-5 * area)) if n_bright is None else n_bright),
        bright_range=bright_flux_range,
        channels=channels,
    )
    neb = None
    if nebula:
        short = min(ny, nx)
        rng = stream(seed, "nebula")
        neb = random_nebula(
            rng,
            (0.0, nx - 1.0, 0.0, ny - 1.0),
            n_blobs=int(nebula_blobs),
            sigma_range=(0.02 * short, 0.25 * short),
            amplitude=nebula_amplitude,
            channels=channels,
            main_sigma=0.15 * short,
            main_center=(
                (nx - 1) / 2 + rng.normal(0, 0.05 * nx),
                (ny - 1) / 2 + rng.normal(0, 0.05 * ny),
            ),
        )

    signal_factor = trans * t_exp[:, None]
    ref_factor = signal_factor[reference]
    plans = []
    elapsed = 0.0
    for k in range(n):
        d = draws[k]
        model = random_gradient(
            d["rng"],
            (ny, nx),
            grad_k[k],
            mix=gradient_mix,
            channels=channels,
            glow_corner=glow_corner,
        )
        sky_c = sky_k[k] * colour
        mean_bg = sky_c + model.mean()
        shift = (0.0, 0.0) if k == reference else tuple(float(v) for v in jitter * d["shift"])
        altitude = min(89.0, altitude_start + altitude_rate * elapsed / 3600.0)
        scale = ref_factor / signal_factor[k]
        truth = FrameTruth(
            index=k,
            is_reference=k == reference,
            scale=scale,
            transmission=1.0 / scale,
            absolute_transmission=trans[k].copy(),
            exposure=float(t_exp[k]),
            sky=sky_c,
            gradient_amplitude=float(grad_k[k]),
            mean_background=mean_bg,
            noise_sigma=noise_sigma(mean_bg, gain, read_noise),
            fwhm=float(fwhm_k[k]),
            shift=shift,
            altitude=float(altitude),
            airmass=float(round(airmass(altitude), 6)),
            date_obs=iso_time(start_time, elapsed),
        )
        brd = random_border(stream(seed, "border", k), border_k[k])
        plans.append(
            _Plan(
                truth=truth,
                psf=PSF(float(fwhm_k[k]), psf, moffat_beta),
                gradient=model,
                border=brd,
                sky=sky_c,
                signal_factor=signal_factor[k],
            )
        )
        elapsed += t_exp[k] + FRAME_GAP

    return SimulatedSequence(
        plans=plans,
        shape=(ny, nx),
        channels=channels,
        reference=reference,
        seed=int(seed),
        bayer=bayer,
        catalog=catalog,
        nebula=neb,
        gain=float(gain),
        read_noise=float(read_noise),
        saturation=float(saturation),
        noise_keywords=bool(noise_keywords),
        header_info={
            "filter_name": filter_name,
            "pixel_size": float(pixel_size),
            "focal_length": float(focal_length),
        },
        params=params,
    )


def iter_sequence(
    n_frames: int = 10, shape: tuple[int, int] = (512, 512), **kwargs
) -> Iterator[SimulatedFrame]:
    """Yield the frames of ``simulate_sequence(n_frames, shape, **kwargs)`` one at a time."""
    yield from simulate_sequence(n_frames, shape, **kwargs).iter_frames()


def write_sequence(
    out_dir: str | Path,
    n_frames: int = 10,
    shape: tuple[int, int] = (512, 512),
    *,
    prefix: str = "frame",
    overwrite: bool = False,
    **kwargs,
) -> list[Path]:
    """Simulate a sequence and write it to ``out_dir`` one frame at a time.

    Writes ``<prefix>_NNN.fits`` and ``truth.json`` (the scalar truth: scale,
    transmission, sky, noise sigma, FWHM, ... per frame, the reference index and
    file, and the arguments). ``kwargs`` are those of :func:`simulate_sequence`.

    Returns
    -------
    list of pathlib.Path
        The FITS files in frame order.
    """
    seq = simulate_sequence(n_frames, shape, **kwargs)
    return seq.write(out_dir, prefix=prefix, overwrite=overwrite)


def read_truth(path: str | Path) -> dict:
    """Read ``truth.json`` (give the file or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def sample_sequence(n_frames: int = 5, shape: tuple[int, int] = (256, 256), *, seed: int = 0):
    """A small, fast mono sequence for the napari sample data and demos.

    Five 256 x 256 frames with a nebula, visible gradients and one clouded frame
    (frame 3 at transmission 0.55); frame 0 is the reference.
    """
    trans = np.linspace(1.0, 0.75, n_frames)
    if n_frames > 3:
        trans[3] = 0.55
    return simulate_sequence(
        n_frames, shape, seed=seed, nebula=True, transmission=trans, star_density=3e-3
    )
