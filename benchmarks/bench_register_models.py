"""Registration error per model asked for, on the dithers of ``tests/test_register_frames.py``.

Five seeds x five frames of 500x400 px (shifts up to 30 px, rotations up to 3 degrees, one
frame turned 180 degrees more): the RMS error of the recovered map at the reference's stars,
its median and worst per model asked for, and which model the star pairs chose (the F-test of
``core/registration/frames.py``). The table of ``docs/register.md`` "Measured accuracy".

    python benchmarks/bench_register_models.py
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from napari_nsg.core.registration.frames import (
    FRAME_MODELS,
    detect_reference_stars,
    register_frame,
)
from napari_nsg.synthetic.dithered import simulate_dithered

SHAPE = (400, 500)
FLIPPED = 5
SEEDS = range(5)
MARGIN = 5


def _stars_inside(d):
    h, w = d.shape
    xy = d.star_xy
    ok = np.all((xy > MARGIN) & (xy < np.array([w, h]) - MARGIN), axis=1)
    return xy[ok]


def main() -> None:
    errors = {m: [] for m in FRAME_MODELS}
    chosen = {m: Counter() for m in FRAME_MODELS}
    for seed in SEEDS:
        d = simulate_dithered(6, SHAPE, seed=seed, max_shift=30.0, max_angle=3.0,
                              flip_frame=FLIPPED)
        stars, at = detect_reference_stars(d.frames[0]), _stars_inside(d)
        for k in range(1, len(d.frames)):
            for model in FRAME_MODELS:
                reg = register_frame(d.frames[0], d.frames[k], model=model,
                                     reference_stars=stars)
                err = reg.transform(at) - d.reference_to_frame(k, at)
                errors[model].append(float(np.sqrt(np.mean(np.sum(err**2, axis=1)))))
                chosen[model][reg.model] += 1
    print("| model asked for | median | worst | fitted |")
    print("|---|---|---|---|")
    for model in FRAME_MODELS:
        fitted = ", ".join(f"{m} {n}" for m, n in chosen[model].items())
        print(f"| {model} | {np.median(errors[model]):.3f} px | {max(errors[model]):.3f} px "
              f"| {fitted} |")


if __name__ == "__main__":
    main()
