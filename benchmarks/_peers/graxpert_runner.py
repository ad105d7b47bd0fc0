"""Run GraXpert's interpolation background extraction on ``.npy`` images.

Executed by the GraXpert environment's Python (not napari-nsg's), one process
for all images and methods so that imports are paid once::

    GRAXPERT_PYTHON graxpert_runner.py JOBS.json

``JOBS.json`` holds ``{"jobs": [{"input": IN.npy, "output": OUT.npy,
"method": "RBF"|"Kriging"|"Splines", "unit": 65535.0}, ...]}``. Each image
(y, x, float32 ADU) is divided by ``unit`` (GraXpert works on [0, 1] and
clips there), background points are chosen by GraXpert's own grid selection
with its default preferences, the background is subtracted and the result is
written back in ADU. One JSON line per job goes to stdout: method, seconds
(grid selection + extraction), and the error text if the method failed.
"""

import json
import sys
import time
import traceback

import numpy as np

#: GraXpert's default preferences (graxpert.preferences.Prefs) and the
#: command-line tool's downscale factor for RBF and Kriging.
POINTS_PER_ROW = 15
TOLERANCE = 1.0
SAMPLE_SIZE = 25
SMOOTHING = 0.0
RBF_KERNEL = "thin_plate"
SPLINE_ORDER = 3
DOWNSCALE = {"RBF": 4, "Kriging": 4, "Splines": 1}


def run_job(job):
    from graxpert.background_extraction import extract_background
    from graxpert.background_grid_selection import background_grid_selection

    image = np.load(job["input"]).astype(np.float32) / job["unit"]
    array = np.ascontiguousarray(image[:, :, None])
    t0 = time.perf_counter()
    points = np.array(background_grid_selection(array, POINTS_PER_ROW, TOLERANCE, SAMPLE_SIZE))
    background = extract_background(array, points, job["method"], SMOOTHING, DOWNSCALE[job["method"]],
                       SAMPLE_SIZE, RBF_KERNEL, SPLINE_ORDER, "Subtraction", None)
    seconds = time.perf_counter() - t0
    if not np.all(np.isfinite(background)) or np.ptp(background) == 0:
        raise RuntimeError("no background model came back (GraXpert logs the cause)")
    np.save(job["output"], array[:, :, 0] * job["unit"])
    return seconds, len(points)


def main():
    with open(sys.argv[1]) as spec:
        jobs = json.load(spec)["jobs"]
    for job in jobs:
        try:
            seconds, n_points = run_job(job)
            out = {"method": job["method"], "seconds": seconds, "points": n_points}
        except Exception as exc:  # noqa: BLE001 - a peer's failure is a result, not a crash
            out = {"method": job["method"], "error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc(limit=3)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
