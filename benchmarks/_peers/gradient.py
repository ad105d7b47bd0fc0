"""Gradient removal from one narrow image: ours (MSGR, with the wide image) against single-image tools.

Simulated wide/narrow pairs (``tests/test_msgr.py``'s settings: stacked-like noise, gain 25, a
wide image whose own gradient is 1 % of its sky) at several nebula sizes. Scored by
:mod:`napari_nsg.synthetic.scoring`: **gradient left** (``residual_fraction``: peak-to-peak of the
smoothed residual over that of the true gradient; ~0.9-1.0 before) and **nebula kept**
(``nebula_kept``: scale of the large-scale nebula relative to its small-scale part; 1 = kept,
0 = removed with the gradient).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from . import graxpert_peer, photutils_peer, siril
from .common import scores, timed

OURS = "ours (MSGR + wide image)"
SIRIL_DEGREES = (1, 2, 3, 4)
#: Widths of the nebula's blobs as fractions of the narrow's short side (the main object is
#: always 0.25); "field-filling" blobs are wider than the frame.
NEBULA_SIZES = {
    "compact": (0.02, 0.06),
    "medium": (0.05, 0.2),
    "large": (0.15, 0.5),
    "field-filling": (0.5, 1.5),
}
RATIO = 3.0
NARROW_SKY = 500.0
WIDE_GRADIENT_OF_SKY = 0.01
GAIN = 25.0


def siril_name(d: int) -> str:
    return f"Siril seqsubsky degree {d}"


def graxpert_name(m: str) -> str:
    return f"GraXpert {m}"


def photutils_name(box: int) -> str:
    return f"photutils Background2D box {box}"


def tool_names() -> list[str]:
    return [OURS, *map(siril_name, SIRIL_DEGREES), *map(graxpert_name, graxpert_peer.METHODS),
            *map(photutils_name, photutils_peer.BOXES)]


def make_pair(shape, size: str, seed: int):
    """A pair as tests/test_msgr.py makes it, with nebula blobs of the given size."""
    from napari_nsg.synthetic import simulate_pair

    return simulate_pair(shape, scale_ratio=RATIO, rotation_deg=20.0 + 10 * seed, seed=seed,
                         gain=GAIN, wide_gradient=WIDE_GRADIENT_OF_SKY * NARROW_SKY * RATIO**2,
                         nebula_scales=NEBULA_SIZES[size])


def _ours(narrow, wide):
    from napari_nsg.core.msgr import msgr

    return msgr(narrow, wide).corrected


def _attempt(func, *args):
    """``(image, seconds)``, or the error text: a tool failing is a result of the benchmark."""
    try:
        seconds, image = timed(func, *args)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return image, seconds


def _siril_runs(siril_exe, narrow) -> dict:
    with tempfile.TemporaryDirectory(prefix="peers_siril_") as tmp:
        done = _attempt(siril.seqsubsky, siril_exe, Path(tmp), narrow, SIRIL_DEGREES)
    if isinstance(done, str):
        return {siril_name(d): done for d in SIRIL_DEGREES}
    return {siril_name(d): res for d, res in done[0].items()}


def _local_tools(narrow, wide, siril_exe):
    """``{tool: (image, seconds) or error}`` for ours, Siril and photutils."""
    out = {OURS: _attempt(_ours, narrow, wide)}
    for box in photutils_peer.BOXES:
        out[photutils_name(box)] = _attempt(photutils_peer.remove_gradient, narrow, box)
    if siril_exe:
        out.update(_siril_runs(siril_exe, narrow))
    return out


@contextmanager
def truth_evaluated_once():
    """Evaluate each pair's true nebula once while scoring many images of it.

    ``scoring.pair_truth`` evaluates every nebula blob over the frame (3.4 s for a
    field-filling 800x600 pair with 149 blobs); the scores are unchanged.
    """
    from napari_nsg.synthetic import scoring

    original, cache = scoring.pair_truth, {}

    def cached(pair, c=0):
        key = (id(pair), c)
        if key not in cache:
            cache[key] = original(pair, c)
        nebula, ok = cache[key]
        return nebula, ok.copy()

    scoring.pair_truth = cached
    try:
        yield
    finally:
        scoring.pair_truth = original


def _score(tables, pairs, results) -> None:
    from napari_nsg.synthetic.scoring import nebula_kept, residual_fraction

    for key, per_tool in results.items():
        size = key.rsplit("-", 1)[0]
        pair = pairs[key]
        for tool, res in per_tool.items():
            score = tables[size].setdefault(tool, scores([tool])[tool])
            if isinstance(res, str):
                score.error = res.splitlines()[0]
                continue
            image, seconds = res
            score.seconds.append(seconds)
            score.add(left=residual_fraction(pair, image), kept=nebula_kept(pair, image))


def bench(shape, seeds, sizes, siril_exe, graxpert_python, progress=print):
    """``{size: {tool: Score}}`` with gradient left, nebula kept and seconds."""

    tables = {size: scores(tool_names()) for size in sizes}
    pairs, narrows, results = {}, {}, {}
    for size in sizes:
        for seed in seeds:
            key = f"{size}-{seed}"
            pair = make_pair(shape, size, seed)
            narrow, wide = siril.quantize(pair.narrow), siril.quantize(pair.wide)
            pairs[key], narrows[key] = pair, narrow
            results[key] = _local_tools(narrow, wide, siril_exe)
            results[key]["before"] = (narrow, 0.0)
            progress(f"gradient, {shape[1]}x{shape[0]} {key}: ours and local peers done")
    if graxpert_python:
        with tempfile.TemporaryDirectory(prefix="peers_graxpert_") as tmp:
            for (key, method), res in graxpert_peer.run(graxpert_python, narrows, Path(tmp)).items():
                results[key][graxpert_name(method)] = res
        progress("gradient: GraXpert done")
    with truth_evaluated_once():
        _score(tables, pairs, results)
    progress("gradient: scored")
    return tables
