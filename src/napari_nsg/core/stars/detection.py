"""Star detection with sep (Source Extractor as a library)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
import sep

from ..nodata import find_no_data, no_data_mask  # noqa: F401 (no_data_mask: re-exported by core.stars)

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
MAD_TO_SIGMA = 1.4826
#: Mesh side (px) and pixel step of :func:`mesh_background` (as sep's default mesh).
MESH = 64
MESH_STEP = 2

#: A clipped star has a flat top: this many pixels within PLATEAU_NEAR of the maximum
#: mark the image as clipped, and stars from PLATEAU_FRACTION of it as saturated.
PLATEAU_MIN_PIXELS = 5
PLATEAU_NEAR = 0.98
PLATEAU_FRACTION = 0.9


@dataclass
class StarTable:
    """Detected stars, one entry per star, brightest first.

    Coordinates are 0-based pixel coordinates with pixel centres on integers
    (``x`` is the column, ``y`` the row).

    Attributes
    ----------
    x, y : ndarray
        Flux-weighted centroids.
    flux : ndarray
        Background-subtracted isophotal flux in the detection image.
    peak : ndarray
        Highest pixel above the local background.
    raw_peak : ndarray
        Highest pixel value including the background (for saturation tests).
    background : ndarray
        Local background level at the star.
    a, b, theta : ndarray
        Second-moment semi-axes (pixels) and angle (radians).
    fwhm : ndarray
        FWHM estimate, ``2.355 * sqrt((a^2 + b^2) / 2)``.
    npix : ndarray
        Number of pixels above the threshold.
    saturated : ndarray of bool
        ``raw_peak`` at or above the saturation level given to the detector.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    raw_peak: np.ndarray
    background: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    fwhm: np.ndarray
    npix: np.ndarray
    saturated: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index) -> StarTable:
        """A new table with the rows selected by ``index`` (mask or indices)."""
        return StarTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def xy(self) -> np.ndarray:
        """``(n, 2)`` array of ``(x, y)``."""
        return np.column_stack([self.x, self.y])

    @classmethod
    def empty(cls) -> StarTable:
        """A table with no stars."""
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, z, z, z, z, np.zeros(0, int), np.zeros(0, bool))


def intensity(data: np.ndarray) -> np.ndarray:
    """The detection image: the frame itself if mono, the mean of the channels if colour.

    A pixel that is no-data in any channel (:func:`~napari_nsg.core.nodata.no_data_mask`)
    is no-data in the result: NaN where a channel is NaN or inf (as a mono
    frame keeps its NaN), else 0 (a zero region stays a zero region).
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        return data
    bad, _ = find_no_data(data)
    if bad is None:  # all finite, no zero region (most frames): the plain mean, no masks
        return np.mean(data, axis=0, dtype=np.float32)
    # plane by plane (numpy's float32 mean over axis 0 adds the planes in order, then
    # divides): no channel-stack of temporaries
    out, not_finite = None, np.zeros(data.shape[1:], bool)
    for plane in data:
        finite = np.isfinite(plane)
        if not finite.all():
            plane = np.where(finite, plane, np.float32(0))
            not_finite |= ~finite
        if out is None:
            out = np.array(plane, dtype=np.float32)  # a copy, as numpy's first plane
        else:
            out += plane
    out /= data.shape[0]
    out[bad.any(axis=0)] = 0
    out[not_finite] = np.nan
    return out


def plateau_level(image: np.ndarray) -> float | None:
    """``PLATEAU_FRACTION`` of the maximum when the brightest pixels form plateaus, else None.

    The same rule as :func:`napari_nsg.core.star_removal.saturation_level`
    (at least ``PLATEAU_MIN_PIXELS`` pixels within ``PLATEAU_NEAR`` of the
    maximum), without copying the finite pixels out: one NaN-skipping maximum
    and one count over the image.
    """
    image = np.asarray(image)
    top = float(np.fmax.reduce(image, axis=None)) if image.size else float("nan")
    if not np.isfinite(top):  # all NaN, or +inf present: the exact (slower) definition
        finite = image[np.isfinite(image)]
        if finite.size == 0:
            return None
        top = float(finite.max())
        count = np.count_nonzero(finite >= PLATEAU_NEAR * top)
    else:
        count = np.count_nonzero(image >= PLATEAU_NEAR * top)
    if top <= 0 or count < PLATEAU_MIN_PIXELS:
        return None
    return PLATEAU_FRACTION * top


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor x factor`` block (a ragged last row/column is dropped).

    NaN spreads to its block (no data stays no data); zero regions stay zero.
    """
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return cv2.resize(np.ascontiguousarray(image[:h, :w], dtype=np.float32),
                      (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def _local_max(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int) -> np.ndarray:
    """The highest finite pixel within ``radius`` of each ``(x, y)`` (NaN if none)."""
    h, w = image.shape
    off = np.arange(-radius, radius + 1)
    cols = np.clip(np.rint(x).astype(int)[:, None] + off, 0, w - 1)
    rows = np.clip(np.rint(y).astype(int)[:, None] + off, 0, h - 1)
    if len(x) == 0:
        return np.zeros(0)
    stamps = image[rows[:, :, None], cols[:, None, :]].reshape(len(x), -1)
    top = np.where(np.isfinite(stamps), stamps, -np.inf).max(axis=1).astype(float)
    top[~np.isfinite(top)] = np.nan
    return top


def mesh_background(image: np.ndarray, mesh: int = MESH, step: int = MESH_STEP, *,
                    interpolation: int = cv2.INTER_CUBIC) -> tuple[np.ndarray, float]:
    """``(background map, noise sigma)`` of a finite 2-D image from the medians of its
    meshes, made with numpy and OpenCV (which let other Python threads run, unlike
    ``sep.Background``).

    Each ``mesh x mesh`` block gives the median of every ``step``-th pixel each way;
    the grid of medians is 3x3 median-filtered (as ``sep.Background(fw=3, fh=3)``:
    stars and small galaxies filling a mesh) and interpolated (``interpolation``, an
    OpenCV flag) with each mesh's value at its centre; a ragged last row and column
    of pixels holds the last interpolated value. The noise is ``MAD_TO_SIGMA`` times
    the median over the meshes of their median absolute deviation (0 on a flat image).
    An image smaller than ``mesh`` is one mesh that way.
    """
    h, w = image.shape
    ny, nx = max(1, h // mesh), max(1, w // mesh)
    my, mx = min(mesh, h), min(mesh, w)
    blocks = image[:ny * my:step, :nx * mx:step].reshape(ny, -(-my // step), nx, -(-mx // step))
    values = blocks.transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    level = np.median(values, axis=2, keepdims=True)
    spread = MAD_TO_SIGMA * np.median(np.abs(values - level), axis=2)
    grid = level[..., 0].astype(np.float32)
    if min(ny, nx) >= 3:
        grid = cv2.medianBlur(grid, 3)
    back = np.empty((h, w), np.float32)
    back[:ny * my, :nx * mx] = cv2.resize(grid, (nx * mx, ny * my), interpolation=interpolation)
    back[ny * my:, :nx * mx] = back[ny * my - 1, :nx * mx]
    back[:, nx * mx:] = back[:, nx * mx - 1:nx * mx]
    return back, float(np.median(spread))


def detect_stars_binned(image: np.ndarray, factor: int, **kwargs) -> StarTable:
    """:func:`detect_stars` on the ``factor``-binned image, in full-resolution pixels.

    ``factor**2`` fewer pixels to search (the background mesh keeps its size
    on the sky). Positions, axes, FWHM and pixel counts are brought back to
    full pixels; ``flux`` to full-resolution units (times ``factor**2``);
    ``raw_peak`` (hence ``saturated``) is the highest full-resolution pixel
    within ``factor`` px of each star, since binning averages a clipped top
    away. Centroids are those of the binned image: re-measure them on the
    full image where precision matters (e.g. windowed centroids).
    """
    factor = int(factor)
    if factor <= 1:
        return detect_stars(image, **kwargs)
    image = np.asarray(image, dtype=np.float32)
    saturation = kwargs.pop("saturation", None)
    kwargs["background_size"] = max(8, kwargs.get("background_size", 64) // factor)
    st = detect_stars(bin_image(image, factor), **kwargs)
    off = (factor - 1) / 2.0
    st.x, st.y = factor * st.x + off, factor * st.y + off
    st.a, st.b, st.fwhm = factor * st.a, factor * st.b, factor * st.fwhm
    st.npix = st.npix * factor * factor
    st.flux = st.flux * factor * factor
    st.raw_peak = _local_max(image, st.x, st.y, factor)
    st.peak = st.raw_peak - st.background
    st.saturated = (np.zeros(len(st), bool) if saturation is None
                    else st.raw_peak >= saturation)
    return st


#: Values from which :func:`fast_median` brackets the median with a sample first.
MEDIAN_SAMPLED_ABOVE = 200_000
#: Sample size, and half-width of the bracket in sample ranks, of :func:`fast_median`.
MEDIAN_SAMPLE = 20_000
MEDIAN_BRACKET = 400


def fast_median(values: np.ndarray) -> float:
    """``np.median(values)`` of a 1-D array of finite values (reordered in place), exactly.

    The two middle order statistics are found among the values between two quantiles of
    a strided sample (a bracket checked by counting), so one partition of the bracket's
    few values replaces that of all of them; the full partition if the check fails.
    """
    n = values.size
    if n < MEDIAN_SAMPLED_ABOVE:
        return float(np.median(values, overwrite_input=True))
    sample = np.sort(values[:: max(1, n // MEDIAN_SAMPLE)])
    mid = sample.size // 2
    lo = sample[max(0, mid - MEDIAN_BRACKET)]
    hi = sample[min(sample.size - 1, mid + MEDIAN_BRACKET)]
    ranks = sorted({(n - 1) // 2, n // 2})
    below = int(np.count_nonzero(values < lo))
    inside = values[(values >= lo) & (values <= hi)]
    if not below <= ranks[0] or ranks[-1] >= below + inside.size:
        return float(np.median(values, overwrite_input=True))
    middle = np.partition(inside, [r - below for r in ranks])[[r - below for r in ranks]]
    return float(np.median(middle))  # the mean of the two for an even count, as numpy's


def near_no_data(bad: np.ndarray, ix: np.ndarray, iy: np.ndarray, edge: int) -> np.ndarray:
    """True for each pixel ``(iy, ix)`` within ``edge`` px (city-block) of a ``bad`` pixel.

    The same as ``ndimage.binary_dilation(bad, iterations=edge)[iy, ix]`` (the cross
    structure, nothing outside the image), read on the stars' diamonds only instead of
    dilating the whole mask.
    """
    h, w = bad.shape
    r = np.arange(-edge, edge + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    on = np.abs(dy) + np.abs(dx) <= edge
    dy, dx = dy[on], dx[on]
    rows, cols = np.asarray(iy)[:, None] + dy, np.asarray(ix)[:, None] + dx
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    hit = bad[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)] & inside
    return hit.any(axis=1)


#: A source whose brightest pixel's 8 neighbours, less the brightest of them, hold less than
#: this fraction of its height above the background is one or two pixels: a hot pixel, a pair
#: of adjacent hot pixels or a cosmic-ray hit, never a star (an undersampled star of FWHM
#: 1.3 px: about 0.8; of FWHM 1.0 px: about 0.55). 3000 hot pixels of 5000-60000 ADU in a
#: 12 Mpx frame took 38 of the registration's 40 brightest ranks before this rule; adjacent
#: pairs (0.33 % of the pixels) registered dithered frames onto themselves before the
#: brightest neighbour was left out.
LONE_PEAK_FRACTION = 0.2
#: Radius (px) of the stamp around a source in which its brightest pixel is found.
LONE_PEAK_RADIUS = 2


def lone_peak_stamps(above: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """True for stamps ``above`` (``(n, s, s)``, less their background) whose brightest
    pixel (``peak``) has 8 neighbours that, but for the brightest of them, hold less than
    :data:`LONE_PEAK_FRACTION` of it: the light is in one or two pixels."""
    n, size = above.shape[0], above.shape[1]
    iy, ix = np.unravel_index(above.reshape(n, -1).argmax(axis=1), above.shape[1:])
    iy, ix = np.clip(iy, 1, size - 2), np.clip(ix, 1, size - 2)
    off = np.arange(-1, 2)
    block = above[np.arange(n)[:, None, None], iy[:, None, None] + off[:, None],
                  ix[:, None, None] + off]
    ring = block.reshape(n, -1)[:, [0, 1, 2, 3, 5, 6, 7, 8]]  # the 8 neighbours
    return ring.sum(axis=1) - ring.max(axis=1) < LONE_PEAK_FRACTION * peak


def lone_peaks(image: np.ndarray, stars: StarTable) -> np.ndarray:
    """True for the sources of ``stars`` whose light is one pixel of ``image`` (2-D)
    (:func:`lone_peak_stamps` on stamps of :data:`LONE_PEAK_RADIUS`).

    sep's filtered detection keeps hot pixels and cosmic-ray hits as stars. Hot pixels sit
    at the same sensor place in every frame of a night: in frames that were not dark-
    subtracted they are "stars" of the same brightness in the reference and the frame,
    which pulled NSG's scale to 1 and matched the frames onto themselves in registration.
    """
    if len(stars) == 0:
        return np.zeros(0, bool)
    h, w = image.shape
    off = np.arange(-LONE_PEAK_RADIUS, LONE_PEAK_RADIUS + 1)
    rows = np.clip(np.rint(stars.y).astype(int)[:, None] + off, 0, h - 1)
    cols = np.clip(np.rint(stars.x).astype(int)[:, None] + off, 0, w - 1)
    above = image[rows[:, :, None], cols[:, None, :]].astype(np.float64)
    above = np.nan_to_num(above - stars.background[:, None, None], nan=0.0, posinf=0.0,
                          neginf=0.0)
    peak = above.max(axis=(1, 2))
    return (peak > 0) & lone_peak_stamps(above, peak)


def detect_stars(
    image: np.ndarray,
    *,
    threshold: float = 5.0,
    min_area: int = 5,
    max_stars: int | None = None,
    saturation: float | None = None,
    background_size: int = 64,
    edge: int = 3,
    deblend_cont: float = 0.005,
    quick_threshold: float | None = None,
) -> StarTable:
    """Detect stars in a 2-D image.

    Parameters
    ----------
    image : ndarray, (y, x)
        The detection image, in its own units (use :func:`intensity` for colour).
    threshold : float
        Detection threshold in units of the background noise.
    min_area : int
        Minimum number of connected pixels above the threshold.
    max_stars : int, optional
        Keep only this many of the brightest.
    saturation : float, optional
        Pixel level from which a star is marked ``saturated``.
    background_size : int
        Mesh size in pixels of sep's background map.
    edge : int
        Stars closer than this to the image edge or to no-data pixels are dropped.
    deblend_cont : float
        sep's deblending contrast.
    quick_threshold : float, optional
        Search first at this (higher) threshold, and return that search if it found
        ``max_stars`` stars (fewer pixels to label and deblend on a crowded field); the
        background map is made once for both searches.

    Returns
    -------
    StarTable
        Brightest first. Empty if nothing was found.
    """
    prep = _subtracted(image, background_size)
    if prep is None:
        return StarTable.empty()
    if quick_threshold is not None and max_stars is not None:
        quick = _star_table(_extract(prep, quick_threshold, min_area, deblend_cont), prep,
                            max_stars, saturation, edge)
        if len(quick) >= max_stars:
            return quick
    return _star_table(_extract(prep, threshold, min_area, deblend_cont), prep, max_stars,
                       saturation, edge)


@dataclass
class _Subtracted:
    """A detection image ready for sep's extraction (:func:`_subtracted`)."""

    sub: np.ndarray  # background-subtracted, no-data filled
    back: np.ndarray  # sep's background map
    bad: np.ndarray | None  # no-data mask, None if the image has none
    rms: float  # the noise (sep's global RMS)


def _subtracted(image: np.ndarray, background_size: int) -> _Subtracted | None:
    """sep's background map of ``image`` and the image less it (no-data filled by the
    median, masked for sep); None if every pixel is no-data."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"detect_stars needs a 2-D image, got shape {image.shape}")
    bad, _ = find_no_data(image)  # None: surely no no-data pixel (no mask made)
    if bad is not None and not bad.any():
        bad = None  # sep skips masked pixels: no mask gives the same result, a pass less
    if bad is not None and bad.all():
        return None
    work = image
    if bad is not None:
        work = image.copy()
        work[bad] = fast_median(image[~bad])
    size = int(max(8, min(background_size, min(image.shape) // 2)))
    bkg = sep.Background(work, mask=bad, bw=size, bh=size, fw=3, fh=3)
    back = bkg.back()
    sub = np.subtract(work, back, out=work if bad is not None else None)  # in place in a copy
    rms = float(bkg.globalrms)
    if not np.isfinite(rms) or rms <= 0:
        rms = float(np.std(sub[~bad] if bad is not None else sub.ravel())) or 1.0
    return _Subtracted(sub, back, bad, rms)


def _extract(prep: _Subtracted, threshold: float, min_area: int, deblend_cont: float):
    """sep's objects above ``threshold`` (its pixel buffer grown as needed)."""
    objects = None
    pixstack = 300_000
    sep.set_sub_object_limit(4096)
    while objects is None:
        sep.set_extract_pixstack(pixstack)
        try:
            objects = sep.extract(prep.sub, threshold, err=prep.rms, mask=prep.bad,
                                  minarea=min_area, deblend_cont=deblend_cont)
        except Exception as exc:  # sep raises plain Exception for buffer overflows
            if "pixel buffer full" not in str(exc) or pixstack > 50_000_000:
                raise
            pixstack *= 4
    return objects


def _star_table(objects, prep: _Subtracted, max_stars: int | None, saturation: float | None,
                edge: int) -> StarTable:
    """The kept objects (off the edges and the no-data), brightest first, as a table."""
    if len(objects) == 0:
        return StarTable.empty()
    x, y = objects["x"].astype(float), objects["y"].astype(float)
    h, w = prep.sub.shape
    bad, back = prep.bad, prep.back
    keep = (x >= edge) & (y >= edge) & (x <= w - 1 - edge) & (y <= h - 1 - edge)
    keep &= objects["flux"] > 0
    keep &= (objects["flag"] & sep.OBJ_TRUNC) == 0
    if bad is not None and edge > 0:
        ix = np.clip(np.round(x).astype(int), 0, w - 1)
        iy = np.clip(np.round(y).astype(int), 0, h - 1)
        keep &= ~near_no_data(bad, ix, iy, edge)
    objects = objects[keep]
    if len(objects) == 0:
        return StarTable.empty()
    order = np.argsort(-objects["flux"])
    if max_stars is not None:
        order = order[:max_stars]
    objects = objects[order]
    x, y = objects["x"].astype(float), objects["y"].astype(float)
    ix = np.clip(np.round(x).astype(int), 0, w - 1)
    iy = np.clip(np.round(y).astype(int), 0, h - 1)
    local_bkg = back[iy, ix].astype(float)
    peak = objects["peak"].astype(float)
    raw_peak = peak + local_bkg
    a, b = objects["a"].astype(float), objects["b"].astype(float)
    saturated = np.zeros(len(objects), bool) if saturation is None else raw_peak >= saturation
    return StarTable(
        x=x,
        y=y,
        flux=objects["flux"].astype(float),
        peak=peak,
        raw_peak=raw_peak,
        background=local_bkg,
        a=a,
        b=b,
        theta=objects["theta"].astype(float),
        fwhm=FWHM_PER_SIGMA * np.sqrt((a**2 + b**2) / 2.0),
        npix=objects["npix"].astype(int),
        saturated=saturated,
    )
