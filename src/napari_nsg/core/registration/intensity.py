"""Registration by the images' structure when too few stars match (MSGR fallback).

A star-poor narrow field (a galaxy or a nebula filling a long focal length
frame) may show only 3-5 stars that the coarser wide image also shows: too few
to tell a true match from a chance alignment (:mod:`.matching` asks for a
chance probability below 1e-12). Here those few stars only *seed* the search:

1. Every similarity that at least 3 star pairs support is a candidate
   (:func:`~.matching.candidate_similarities`).
2. Both images are band-passed, the wide in its own pixels and the narrow on
   a working grid (binned to about 2/3 of a wide pixel): a Gaussian of one
   wide pixel minus one of ``BANDPASS_OUTER`` wide pixels (the gradient, which
   the two images do not share, goes), then compressed with ``asinh`` so that
   a few bright stars do not outweigh the nebula, the galaxy and the faint
   stars. The wide band-pass is resampled onto the grid with each candidate
   and the candidates are scored by the correlation of the two.
3. The best candidate is refined by ECC (``cv2.findTransformECC``, an affine
   correction that maximises the correlation), twice: the second run, on the
   wide image resampled with the first run's model, must ask for almost no
   change, and a run started from a shifted seed must end at the same model
   (``consistency``).
4. It is refused (never applied silently) when ECC does not converge, the
   correlation is low, another candidate correlates almost as well, the runs
   disagree, or the seed stars no longer match under the result.

A header's WCS that no star can check (a starless narrow field) is checked the
same way, seeded by the WCS instead of star pairs (:func:`search_around`,
:func:`refine_seed`): rotations within a few degrees and shifts within a
quarter of the field are searched on a coarse grid by normalised correlation,
and the best place, if it stands out, is refined by maximising the correlation
(the WCS's scale kept, unless the structure correlates better at another scale:
:func:`search_scales`). :mod:`.register` compares it with the WCS.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import minimize

from ..nodata import no_data_mask
from .matching import candidate_similarities
from .refine import pair_stars
from .transforms import Similarity

__all__ = ["IntensityError", "IntensityMatch", "SeedSearch", "correlations", "refine_seed",
           "register_by_intensity", "rescaled", "search_around", "search_scales"]

#: Outer Gaussian of the band-pass, in wide pixels (structure larger than this is gradient).
BANDPASS_OUTER = 8.0
#: Band-passed values are compressed as asinh(v / (ASINH_SOFTNESS * robust sigma)).
ASINH_SOFTNESS = 3.0
#: The working grid's pixel is at most this fraction of a wide pixel (half of it for
#: the final refinement).
WORKING_PIXEL = 0.67
#: Refusal thresholds: the final correlation, its margin over the next candidate
#: (as a ratio of correlations before refinement), the disagreement of two ECC runs
#: (wide px, anywhere in the field) and the distance of the seed stars (wide px).
MIN_CORRELATION = 0.3
MIN_MARGIN = 1.5
MAX_DISAGREEMENT = 0.35
MAX_STAR_DISTANCE = 2.0
#: Fewest working-grid pixels the two images must share.
MIN_OVERLAP = 0.5
#: Candidates scored at most; brightest stars used for the seed triangles (the wide
#: image is the shallower one: the stars both show are the narrow image's brightest).
MAX_SEEDS = 400
SEED_NARROW_STARS = 10
SEED_WIDE_STARS = 70
ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-6)
#: Start offset (wide px) of the run that checks consistency.
CHECK_OFFSET = 1.0
#: Search around an approximate model (a WCS to check, :func:`search_around`): rotations
#: (degrees either way) and shifts (fraction of the narrow field's longer side either way),
#: on a grid of at most SEARCH_SIDE pixels a side; peaks nearer than SEARCH_EXCLUSION wide px
#: to the best are the same peak (not a rival for the margin).
SEARCH_ROTATION = 5.0
SEARCH_SHIFT = 0.25
SEARCH_SIDE = 256
SEARCH_EXCLUSION = 4.0
#: Scale factors (wide px per narrow px, relative to a seed's) that :func:`search_scales` also
#: tries: 0.8-1.25 in 15 steps of 3.2 % (a wrong focal length or pixel size in the header:
#: the WCS then lands 4-23 narrow px off at the corners of a 300 x 400 field), and 0.5 and 2
#: (a frame binned 2 x 2 after its WCS was written, or the other way round).
SCALE_SCAN = (0.5, *(float(f) for f in np.round(np.exp(np.linspace(np.log(0.8), np.log(1.25), 15)), 4)),
              2.0)
#: :func:`search_scales` searches on a coarser grid, of at most SCAN_SIDE pixels a side (it
#: only picks the scale; the search at the chosen one is redone on the usual grid).
SCAN_SIDE = 96
#: Its refinement (:func:`refine_seed`): the correlation itself maximised (Nelder-Mead from
#: steps of MAXIMISE_STEP wide px, with the wide band-passed once in its own pixels, then from
#: steps of MAXIMISE_POLISH with it read at each model and band-passed on the grid, to
#: MAXIMISE_XTOL, at most MAXIMISE_EVALS evaluations each) on a grid of MAXIMISE_PIXEL wide
#: px, at most MAXIMISE_SIDE pixels a side. (ECC converged 0.6 deg off, 3.5 px at the
#: corners, on a simulated starless pair whose correlation peaks within 0.04 deg of the
#: truth; the fast stage alone ends 0.6 px off where the polish ends 0.07 px off; the polish
#: on the grid twice as fine was 4x slower and no better.)
MAXIMISE_STEP = 1.0
MAXIMISE_POLISH = 0.25
MAXIMISE_XTOL = 0.005
MAXIMISE_EVALS = 400
MAXIMISE_SIDE = 1024
MAXIMISE_PIXEL = WORKING_PIXEL


class IntensityError(ValueError):
    """The intensity registration found no trustworthy model (the reason in words)."""


@dataclass
class IntensityMatch:
    """Result of :func:`register_by_intensity`.

    Attributes
    ----------
    matrix : ndarray, (3, 3)
        Affine narrow pixel -> wide pixel.
    correlation : float
        Correlation of the band-passed images under the model (0..1): ECC's, or the one
        :func:`refine_seed` maximises.
    margin : float
        Correlation of the best candidate over the next distinct one (before ECC);
        inf when there was one candidate.
    disagreement_px : float
        Largest distance, over the narrow field, between the models of the two
        ECC runs (narrow px).
    seeds : int
        Candidate similarities scored.
    seed_pairs : int
        Star pairs supporting the chosen seed.
    narrow_xy, wide_xy : ndarray, (n, 2)
        The stars that match under the final model.
    star_rms_px : float
        RMS distance of those stars from the model (narrow px; NaN when none).
    """

    matrix: np.ndarray
    correlation: float
    margin: float
    disagreement_px: float
    seeds: int
    seed_pairs: int
    narrow_xy: np.ndarray
    wide_xy: np.ndarray
    star_rms_px: float

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return xy @ self.matrix[:2, :2].T + self.matrix[:2, 2]


def _filled(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image with no-data set to its median, valid mask)``, float32."""
    img = np.asarray(image, dtype=np.float32)
    valid = ~no_data_mask(img)
    if not valid.all():
        img = np.where(valid, img, np.median(img[valid]) if valid.any() else 0).astype(np.float32)
    return img, valid


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def bandpass(image: np.ndarray, valid: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Gaussian(inner) minus Gaussian(outer) over the valid pixels, asinh-compressed, 0 elsewhere."""
    w = valid.astype(np.float32)
    data = np.where(valid, image, 0).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        near = _blur(data, inner) / _blur(w, inner)
        far = _blur(data, outer) / _blur(w, outer)
    d = np.where(valid, near - far, 0).astype(np.float32)
    v = d[valid]
    sigma = 1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0
    if not np.isfinite(sigma) or sigma <= 0:
        sigma = float(np.std(v)) if v.size else 1.0
    return np.where(valid, np.arcsinh(d / (ASINH_SOFTNESS * max(sigma, 1e-12))), 0).astype(
        np.float32)


class _Grid:
    """The working grid: narrow pixels binned by ``k``, and the narrow band-pass on it."""

    def __init__(self, narrow: np.ndarray, ratio: float, pixel: float = WORKING_PIXEL):
        self.ratio = float(ratio)
        self.k = max(1, int(np.floor(pixel * self.ratio)))
        img, valid = _filled(narrow)
        h, w = (img.shape[0] // self.k) * self.k, (img.shape[1] // self.k) * self.k
        size = (w // self.k, h // self.k)
        small = cv2.resize(img[:h, :w], size, interpolation=cv2.INTER_AREA)
        vsmall = cv2.resize(valid[:h, :w].astype(np.float32), size,
                            interpolation=cv2.INTER_AREA) > 0.999
        self.shape = small.shape
        self.narrow_shape = np.shape(narrow)
        wide_px = self.ratio / self.k  # working px per wide px
        # (outer = BANDPASS_OUTER wide px, unless the grid pixel is coarser than a wide pixel)
        self.inner = max(0.7, wide_px)
        self.outer = BANDPASS_OUTER * self.inner
        self.valid = vsmall
        self.narrow = bandpass(small, vsmall, self.inner, self.outer)
        off = (self.k - 1) / 2.0
        self.to_narrow = np.array([[self.k, 0, off], [0, self.k, off], [0, 0, 1.0]])

    def wide_on_grid(self, wide: np.ndarray, wide_valid: np.ndarray, matrix: np.ndarray, *,
                     filtered: bool = False):
        """The wide image read at ``matrix`` (narrow -> wide) on the grid, band-passed there
        (or already band-passed in its own pixels: ``filtered``), and where both images
        have data."""
        m = (matrix @ self.to_narrow)[:2].astype(np.float32)
        h, w = self.shape
        flags = (cv2.INTER_LINEAR if filtered else cv2.INTER_CUBIC) | cv2.WARP_INVERSE_MAP
        img = cv2.warpAffine(wide, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        inside = cv2.warpAffine(wide_valid.astype(np.float32), m, (w, h), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.999
        valid = inside & self.valid
        if filtered:
            return np.where(valid, img, 0).astype(np.float32), valid
        return bandpass(img, valid, self.inner, self.outer), valid

    def wide_on_canvas(self, wide: np.ndarray, wide_valid: np.ndarray, matrix: np.ndarray,
                       pad: int) -> np.ndarray:
        """The wide image read at ``matrix`` on the grid extended by ``pad`` pixels each side,
        band-passed there (0 outside the wide frame)."""
        shift = np.array([[1.0, 0, -pad], [0, 1.0, -pad], [0, 0, 1.0]])
        m = (matrix @ self.to_narrow @ shift)[:2].astype(np.float32)
        h, w = self.shape[0] + 2 * pad, self.shape[1] + 2 * pad
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        img = cv2.warpAffine(wide, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        inside = cv2.warpAffine(wide_valid.astype(np.float32), m, (w, h), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.999
        return bandpass(img, inside, self.inner, self.outer)

    def correlation(self, wide_bp: np.ndarray, valid: np.ndarray) -> float:
        if valid.mean() < MIN_OVERLAP * self.valid.mean():
            return 0.0
        a, b = self.narrow[valid], wide_bp[valid]
        a, b = a - a.mean(), b - b.mean()
        den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
        return float(np.dot(a, b) / den) if den > 0 else 0.0


def _ecc(grid: _Grid, wide, wide_valid, matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """One ECC refinement of ``matrix`` (narrow -> wide); raises IntensityError if it fails."""
    wbp, valid = grid.wide_on_grid(wide, wide_valid, matrix)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        cc, warp = cv2.findTransformECC(grid.narrow, wbp, warp, cv2.MOTION_AFFINE, ECC_CRITERIA,
                                        valid.astype(np.uint8), 1)
    except cv2.error:
        raise IntensityError("the intensity refinement (ECC) did not converge") from None
    w3 = np.vstack([warp.astype(float), [0, 0, 1]])
    # grid u -> warped-grid W(u) -> narrow -> wide
    new = matrix @ grid.to_narrow @ w3 @ np.linalg.inv(grid.to_narrow)
    return nearest_similarity(new, grid.narrow_shape), float(cc)


def nearest_similarity(matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The similarity closest to an affine ``matrix`` (same parity), mapping the narrow
    centre where ``matrix`` does. ECC's affine freedom over a small, star-poor footprint
    shears along the structure; a similarity does not."""
    lin = matrix[:2, :2]
    flip = np.linalg.det(lin) < 0
    m = lin @ np.diag([-1.0, 1.0]) if flip else lin
    a, b = (m[0, 0] + m[1, 1]) / 2, (m[1, 0] - m[0, 1]) / 2
    sim = np.array([[a, -b], [b, a]])
    if flip:
        sim = sim @ np.diag([-1.0, 1.0])
    c = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    out = np.eye(3)
    out[:2, :2] = sim
    out[:2, 2] = lin @ c + matrix[:2, 2] - sim @ c
    return out


def _field_distance(m1: np.ndarray, m2: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance (wide px) between two affine maps over the narrow frame's corners."""
    h, w = shape
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float)
    d = (c @ m1.T)[:, :2] - (c @ m2.T)[:, :2]
    return float(np.max(np.hypot(d[:, 0], d[:, 1])))


def _score_seeds(grid, wide_bp, wide_valid, seeds) -> list[tuple[float, Similarity, int]]:
    """Seeds by the correlation they give, best first (the wide image band-passed once)."""
    scored = []
    for sim, n in seeds[:MAX_SEEDS]:
        wbp, valid = grid.wide_on_grid(wide_bp, wide_valid, sim.matrix(), filtered=True)
        scored.append((grid.correlation(wbp, valid), sim, n))
    return sorted(scored, key=lambda s: -s[0])


def register_by_intensity(
    narrow: np.ndarray,
    wide: np.ndarray,
    narrow_xy: np.ndarray,
    wide_xy: np.ndarray,
    *,
    scale_range: tuple[float, float],
    allow_flip: bool = True,
) -> IntensityMatch:
    """Register ``wide`` onto ``narrow`` from their structure, seeded by a few star pairs.

    Parameters
    ----------
    narrow, wide : ndarray, (y, x)
        Detection images (intensity) of the two frames.
    narrow_xy, wide_xy : ndarray, (n, 2)
        Their detected stars, brightest first (at least 3 each).
    scale_range : (float, float)
        Scale ratios (narrow px per wide px) allowed.
    allow_flip : bool
        Accept a mirrored solution.

    Returns
    -------
    IntensityMatch

    Raises
    ------
    IntensityError
        No seed, ECC did not converge, or the result is not trustworthy (the
        reason and the numbers in the message).
    """
    shape = np.shape(narrow)
    seeds = candidate_similarities(narrow_xy, wide_xy, shape, np.shape(wide),
                                   scale_range=scale_range, allow_flip=allow_flip,
                                   n_narrow=SEED_NARROW_STARS, max_wide_per_window=SEED_WIDE_STARS,
                                   max_candidates=MAX_SEEDS)
    if not seeds:
        raise IntensityError("no similarity is supported by 3 or more star pairs")
    ratio = float(np.median([1.0 / s.scale for s, _ in seeds]))
    grid = _Grid(narrow, ratio)
    wimg, wvalid = _filled(wide)
    # scoring: the wide band-passed once in its own pixels (isotropic Gaussians commute
    # with a similarity, the scale taken into account); ECC: on the grid, exactly
    scored = _score_seeds(grid, bandpass(wimg, wvalid, 1.0, BANDPASS_OUTER), wvalid, seeds)
    best_score, best, n_seed = scored[0]
    margin = best_score / scored[1][0] if len(scored) > 1 and scored[1][0] > 0 else np.inf
    if best_score <= 0 or margin < MIN_MARGIN:
        raise IntensityError(
            f"no candidate stands out: the best of {len(scored)} correlates {best_score:.2f}, "
            f"the next {scored[1][0]:.2f} (a {MIN_MARGIN:g}x margin is needed)")
    final, cc, disagree = _refine(narrow, wimg, wvalid, grid, best.matrix())
    return _checked(final, cc, disagree, float(margin), len(scored), n_seed, shape, narrow_xy,
                    wide_xy)


def _refine(narrow, wimg, wvalid, grid: _Grid, start: np.ndarray):
    """``(model, correlation, disagreement in wide px)`` of ECC from ``start``: coarse first
    (the seed may be a wide pixel off), then on a grid twice as fine, and once more from a
    start shifted by CHECK_OFFSET."""
    fine = _Grid(narrow, grid.ratio, WORKING_PIXEL / 2)
    first, _ = _ecc(fine, wimg, wvalid, _ecc(grid, wimg, wvalid, start)[0])
    final, cc = _ecc(fine, wimg, wvalid, first)
    shifted = start.copy()
    shifted[:2, 2] += CHECK_OFFSET
    check, _ = _ecc(fine, wimg, wvalid, _ecc(grid, wimg, wvalid, shifted)[0])
    shape = np.shape(narrow)
    disagree = max(_field_distance(final, first, shape), _field_distance(final, check, shape))
    return final, cc, disagree


def _checked(final, cc, disagree, margin, n_scored, n_seed, shape, narrow_xy, wide_xy):
    """The refined model as an IntensityMatch, or IntensityError when it is not trustworthy."""
    scale = np.sqrt(abs(np.linalg.det(final[:2, :2])))  # wide px per narrow px
    if cc < MIN_CORRELATION:
        raise IntensityError(f"the images correlate too little under the refined model "
                             f"({cc:.2f} < {MIN_CORRELATION:g})")
    if disagree > MAX_DISAGREEMENT:
        raise IntensityError(f"the intensity refinement is unstable: two runs end "
                             f"{disagree / scale:.2f} narrow px apart")
    match = IntensityMatch(final, cc, float(margin), float(disagree / scale), n_scored, n_seed,
                           np.zeros((0, 2)), np.zeros((0, 2)), float("nan"))
    if narrow_xy is None or wide_xy is None or len(narrow_xy) == 0 or len(wide_xy) == 0:
        if n_seed:
            raise IntensityError("no stars to check the refined model against its seed pairs")
        return match
    ni, wj = pair_stars(match(narrow_xy), np.asarray(wide_xy, float), MAX_STAR_DISTANCE)
    if len(ni) < min(3, n_seed):
        raise IntensityError(f"the refined model keeps only {len(ni)} of the {n_seed} seed star "
                             f"pairs within {MAX_STAR_DISTANCE:g} wide px")
    if len(ni) == 0:
        return match
    match.narrow_xy, match.wide_xy = np.asarray(narrow_xy)[ni], np.asarray(wide_xy)[wj]
    d = match(match.narrow_xy) - match.wide_xy
    match.star_rms_px = float(np.sqrt(np.mean(np.sum(d**2, axis=1)))) / scale
    return match


@dataclass
class SeedSearch:
    """Result of :func:`search_around`: where the structure puts the wide image near a seed.

    Attributes
    ----------
    matrix : ndarray, (3, 3)
        The best similarity (narrow -> wide) found, before refinement.
    correlation : float
        Its correlation (normalised, band-passed images on the search grid).
    margin : float
        ``correlation`` over the best one further than SEARCH_EXCLUSION wide px from it
        (inf when none correlates positively).
    seed_correlation : float
        The correlation at the seed itself.
    grid_px : float
        The search grid's pixel, in narrow px (the coarse result's resolution).
    """

    matrix: np.ndarray
    correlation: float
    margin: float
    seed_correlation: float
    grid_px: float


def local_similarity_matrix(transform, shape: tuple[int, int]) -> np.ndarray:
    """The similarity (3x3) nearest to ``transform`` (narrow xy -> wide xy) at the narrow centre."""
    c = _centre(shape)
    p = np.asarray(transform(np.array([c, c + (1.0, 0.0), c + (0.0, 1.0)])), float)
    affine = np.eye(3)
    affine[:2, :2] = np.column_stack([p[1] - p[0], p[2] - p[0]])
    affine[:2, 2] = p[0] - affine[:2, :2] @ c
    return nearest_similarity(affine, shape)


def _about_centre(angle_deg: float, centre: np.ndarray) -> np.ndarray:
    a = np.radians(angle_deg)
    return _about(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]]),
                  centre)


def _scaled_about_centre(factor: float, centre: np.ndarray) -> np.ndarray:
    return _about(np.diag([factor, factor, 1.0]), centre)


def _about(linear: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The 3x3 map ``linear`` applied about ``centre`` instead of the origin."""
    t = np.eye(3)
    t[:2, 2] = centre
    return t @ linear @ np.linalg.inv(t)


def _search_grid(narrow: np.ndarray, ratio: float, pixels: int = SEARCH_SIDE) -> _Grid:
    """A working grid of at most ``pixels`` pixels a side (never finer than the usual one)."""
    side = max(np.shape(narrow)[-2:]) / ratio  # wide px
    return _Grid(narrow, ratio, max(WORKING_PIXEL, side / pixels))


def search_around(narrow: np.ndarray, wide: np.ndarray, seed: np.ndarray, *,
                  grid_scale: np.ndarray | None = None, side: int = SEARCH_SIDE) -> SeedSearch:
    """Search the structure for the wide image's place near an approximate model ``seed``
    (a similarity, narrow -> wide, e.g. from the headers' WCS): rotations within
    SEARCH_ROTATION degrees of it (about the narrow centre) and, for each, every shift within
    SEARCH_SHIFT of the narrow field, by the normalised correlation of the band-passed
    images (``cv2.matchTemplate``), on a grid of at most ``side`` pixels a side for the scale
    of ``grid_scale`` (default: the seed's)."""
    shape = np.shape(narrow)
    ratio = _ratio(seed)
    grid = _search_grid(narrow, _ratio(seed if grid_scale is None else grid_scale), side)
    wimg, wvalid = _filled(wide)
    h, w = grid.shape
    pad = int(np.ceil(SEARCH_SHIFT * max(h, w)))
    step = np.degrees(1.0 / (0.5 * np.hypot(h, w)))  # one grid pixel at the corners
    n = int(np.ceil(SEARCH_ROTATION / step))
    centre = _centre(shape)
    template = np.where(grid.valid, grid.narrow, 0).astype(np.float32)
    maps, models = [], []
    for angle in np.arange(-n, n + 1) * step:
        model = seed @ _about_centre(angle, centre)
        canvas = grid.wide_on_canvas(wimg, wvalid, model, pad)
        maps.append(cv2.matchTemplate(canvas, template, cv2.TM_CCOEFF_NORMED))
        models.append(model)
    maps = np.nan_to_num(np.array(maps), nan=-1.0)
    ia, iy, ix = np.unravel_index(int(np.argmax(maps)), maps.shape)
    best = float(maps[ia, iy, ix])
    rival = _rival_peak(maps.max(axis=0), (iy, ix), SEARCH_EXCLUSION * ratio / grid.k)
    shift = np.eye(3)
    shift[:2, 2] = grid.k * np.array([ix - pad, iy - pad], float)
    return SeedSearch(matrix=models[ia] @ shift, correlation=best,
                      margin=best / rival if rival > 0 else np.inf,
                      seed_correlation=float(maps[n, pad, pad]), grid_px=float(grid.k))


def search_scales(narrow: np.ndarray, wide: np.ndarray, seed: np.ndarray,
                  factors=SCALE_SCAN) -> dict[float, SeedSearch]:
    """:func:`search_around` at the seed's scale times each of ``factors`` and 1 (about the
    narrow centre), by factor, all on the seed's coarse grid of SCAN_SIDE pixels a side (a
    grid of its own for each scale was up to 10x slower where its pixel rounds down)."""
    return {f: search_around(narrow, wide, rescaled(seed, f, np.shape(narrow)), grid_scale=seed,
                             side=SCAN_SIDE)
            for f in sorted({1.0, *map(float, factors)})}


def rescaled(model: np.ndarray, factor: float, shape) -> np.ndarray:
    """The similarity ``model`` (narrow -> wide) with its scale times ``factor`` about the
    centre of a narrow image of ``shape``."""
    return model @ _scaled_about_centre(factor, _centre(shape))



def _rival_peak(score: np.ndarray, best: tuple[int, int], radius: float) -> float:
    """The highest other peak of a correlation map: local maxima inside the map (a map edge
    is a slope, not a peak) further than ``radius`` from ``best``; 0 when none."""
    peaks = score >= cv2.dilate(score, np.ones((3, 3), np.uint8))
    peaks[[0, -1], :] = False
    peaks[:, [0, -1]] = False
    yy, xx = np.nonzero(peaks)
    far = np.hypot(yy - best[0], xx - best[1]) > radius
    return float(score[yy[far], xx[far]].max()) if far.any() else 0.0


def refine_seed(narrow: np.ndarray, wide: np.ndarray, search: SeedSearch,
                narrow_xy: np.ndarray | None = None,
                wide_xy: np.ndarray | None = None, *, free_scale: bool = False) -> IntensityMatch:
    """Refine a :func:`search_around` result by maximising the correlation (rotation and
    shift), twice (the second run from a start one wide pixel off, shifted and turned), with
    the checks of :func:`register_by_intensity` (the stars, when given, are reported, not
    required); raises IntensityError when the result is not trustworthy.

    The scale is kept at the seed's: a header's pixel scales are its surest part (a stale
    reference point or a turned camera are what go wrong), and over a smooth, starless
    footprint the scale is what the structure determines worst (ECC: 0.5 % off on the
    simulated starless pair, 1.4 px at its corners). ECC with the scale fixed still ended
    0.6 deg off on another (3.5 px), where the correlation itself peaks within 0.04 deg.
    ``free_scale``: the scale is maximised too (when :func:`search_scales` found the
    header's scale itself wrong)."""
    if search.margin < MIN_MARGIN:
        raise IntensityError(
            f"no place stands out in the image structure: the best correlates "
            f"{search.correlation:.2f}, {search.margin:.2f}x the next (a {MIN_MARGIN:g}x margin "
            "is needed)")
    shape = np.shape(narrow)
    grid = _maximise_grid(narrow, search.matrix)
    side = max(shape[-2:]) / grid.ratio  # wide px
    wimg, wvalid = _filled(wide)
    # fast: the wide band-passed once in its own pixels (as for the seeds' scores); then
    # exact: the wide read at the model, band-passed on the grid, from a smaller simplex
    wbp = bandpass(wimg, wvalid, 1.0, BANDPASS_OUTER)
    ends = []
    other = search.matrix @ _about_centre(np.degrees(CHECK_OFFSET / (0.5 * side)),
                                          _centre(shape))
    other[:2, 2] += CHECK_OFFSET
    for start in (search.matrix, other):
        fast, _ = _maximise(grid, wbp, wvalid, start, MAXIMISE_STEP, filtered=True,
                            free_scale=free_scale)
        ends.append(_maximise(grid, wimg, wvalid, fast, MAXIMISE_POLISH, free_scale=free_scale))
    (final, cc), (check, _) = ends
    return _checked(final, cc, _field_distance(final, check, shape), search.margin, 1, 0, shape,
                    narrow_xy, wide_xy)


def correlations(narrow: np.ndarray, wide: np.ndarray, matrices) -> list[float]:
    """The correlation that :func:`refine_seed` maximises, at each similarity in ``matrices``
    (narrow -> wide; the first one's scale sets the grid)."""
    grid = _maximise_grid(narrow, matrices[0])
    wimg, wvalid = _filled(wide)
    return [grid.correlation(*grid.wide_on_grid(wimg, wvalid, np.asarray(m, float)))
            for m in matrices]


def _ratio(matrix: np.ndarray) -> float:
    """Narrow px per wide px of a narrow -> wide similarity."""
    return 1.0 / np.sqrt(abs(np.linalg.det(matrix[:2, :2])))


def _maximise_grid(narrow: np.ndarray, matrix: np.ndarray) -> _Grid:
    """The grid :func:`refine_seed` maximises on, for the scale of ``matrix``: MAXIMISE_PIXEL
    wide px, at most MAXIMISE_SIDE pixels a side."""
    ratio = _ratio(matrix)
    side = max(np.shape(narrow)[-2:]) / ratio  # wide px
    return _Grid(narrow, ratio, max(MAXIMISE_PIXEL, side / MAXIMISE_SIDE))


def _centre(shape) -> np.ndarray:
    return np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])


def _maximise(grid: _Grid, wide, wvalid, start: np.ndarray, step: float, *,
              filtered: bool = False, free_scale: bool = False) -> tuple[np.ndarray, float]:
    """The rotation and shift of ``start`` (its scale kept, unless ``free_scale``) that
    maximise the correlation of the narrow band-pass on ``grid`` with the wide image read
    there (``filtered``: already band-passed in its own pixels) (Nelder-Mead from steps of
    ``step``, every parameter in wide px: the shift, and the rotation and the scale as the
    displacements they give at the corners)."""
    shape = grid.narrow_shape[-2:]
    centre = _centre(shape)
    reach = 0.5 * np.hypot(*shape) / grid.ratio  # wide px from the centre to a corner
    n = 4 if free_scale else 3

    def model(p):
        m = start @ _about_centre(np.degrees(p[2] / reach), centre)
        if free_scale:
            m = m @ _scaled_about_centre(1.0 + p[3] / reach, centre)
        m[:2, 2] += p[:2]
        return m

    def cost(p):
        return -grid.correlation(*grid.wide_on_grid(wide, wvalid, model(p), filtered=filtered))

    simplex = np.vstack([np.zeros(n), step * np.eye(n)])
    res = minimize(cost, np.zeros(n), method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": MAXIMISE_XTOL,
                            "fatol": 1e-9, "maxfev": MAXIMISE_EVALS})
    return model(res.x), float(-res.fun)
