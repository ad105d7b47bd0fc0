"""GraXpert's interpolation methods (RBF, Kriging, Splines), run in GraXpert's own Python.

GraXpert 3.2 (PyPI ``graxpert``) needs Python >= 3.12 and numpy >= 2.5, so it cannot share
napari-nsg's environment; its AI method downloads a model, so only the interpolation methods
run offline. With scipy 1.18 its Splines mode fails (``bisplrep``: "negative dimensions are not
allowed"); scipy 1.16 works. :mod:`.graxpert_runner` does the work in that environment.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

METHODS = ("RBF", "Kriging", "Splines")
RUNNER = Path(__file__).with_name("graxpert_runner.py")
UNIT = 65535.0
TIMEOUT_S = 3600
INSTALL_HINT = (
    "GraXpert: needs Python >= 3.12 in its own environment, e.g.\n"
    "    python3.12 -m venv /opt/graxpert-venv\n"
    "    /opt/graxpert-venv/bin/pip install graxpert 'scipy<1.17'\n"
    "  then pass --graxpert-python /opt/graxpert-venv/bin/python")


def check(python: str | None) -> tuple[str | None, str]:
    """``(python, version)`` when GraXpert imports there, else ``(None, why)``."""
    if not python:
        return None, "no --graxpert-python given"
    probe = ("import importlib.metadata as m, scipy, numpy; "
             "import graxpert.background_extraction; "
             "print(m.version('graxpert'), scipy.__version__, numpy.__version__)")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False, timeout=300)
    except OSError as exc:
        return None, f"{python}: {exc}"
    if out.returncode != 0:
        return None, f"{python}: cannot import graxpert ({out.stderr.strip().splitlines()[-1:]})"
    gx, sp, npv = out.stdout.split()
    return python, f"GraXpert {gx} (scipy {sp}, numpy {npv})"


def run(python: str, images: dict[str, np.ndarray], folder: Path,
        methods: tuple[str, ...] = METHODS) -> dict[tuple[str, str], tuple[np.ndarray, float] | str]:
    """Every method on every image in one GraXpert process.

    Returns ``{(image key, method): (corrected ADU, seconds)}``, or the error text where the
    method failed.
    """
    jobs, keys = [], []
    for key, image in images.items():
        src = folder / f"{key}.npy"
        np.save(src, image.astype(np.float32))
        for method in methods:
            jobs.append({"input": str(src), "output": str(folder / f"{key}_{method}.npy"),
                         "method": method, "unit": UNIT})
            keys.append((key, method))
    spec = folder / "jobs.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    proc = subprocess.run([python, str(RUNNER), str(spec)], capture_output=True, text=True,
                          check=False, timeout=TIMEOUT_S)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    out = {}
    for key, job, line in zip(keys, jobs, lines):
        out[key] = line.get("error") or (np.load(job["output"]), line["seconds"])
    for key in keys[len(lines):]:
        out[key] = f"GraXpert runner stopped (exit {proc.returncode}): {proc.stderr.strip()[-200:]}"
    return out
