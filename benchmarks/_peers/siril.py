"""Siril 1.0.6 driven by ``siril-cli -s SCRIPT``: what its scripts can do, measured.

Facts about Siril 1.0.6 this module relies on (checked on this machine):

* float FITS are read as [0, 1] data (ADU / 65535); 16-bit FITS stay in ADU, so inputs are
  written as uint16 and results read back in ADU;
* ``linear_match REF LOW HIGH`` fits ``REF = b + a * image`` over all pixels in (LOW, HIGH) and
  logs ``y_0 = b + a*x_0`` with ``b`` in [0, 1] units;
* stacking normalization (``-norm=addscale|mulscale``) neither writes normalized frames nor logs
  its coefficients; stacking the reference with one frame (mean, rejection thresholds so wide
  that nothing is rejected) gives ``(ref + a * frame + b) / 2``, from which ``a`` and ``b`` are
  recovered exactly. ``rej n`` would silently turn normalization off, hence ``rej s 100 100``;
* ``subsky`` on one loaded image fails in script mode; ``seqsubsky SEQ DEGREE`` on a sequence
  (files ``name_00001.fit``...) works and writes ``bkg_name_00001.fit`` (16-bit for 16-bit input);
* each sequence operation logs ``Execution time: ...`` (reading and writing included).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

EXECUTABLE = "siril-cli"
INSTALL_HINT = "Siril: apt-get install siril   (Debian/Ubuntu; provides siril-cli; tested with 1.0.6)"
#: Siril's float data range: 16-bit ADU are divided by this.
UNIT = 65535.0
#: Sigma-clipping thresholds so wide that stacking rejects nothing (``rej n`` disables normalization).
NO_REJECTION = "rej s 100 100"
SCRIPT_TIMEOUT_S = 1800
_TIME = re.compile(r"(?<!Total )[Ee]xecution time: ([\d.]+) (ms|s)\b")
_TOTAL = re.compile(r"Total execution time: ([\d.]+) (ms|s)\b")
_FIT = re.compile(r"y_0 = ([-+0-9.e]+) \+ ([-+0-9.e]+)\*x_0")


class SirilError(RuntimeError):
    """A Siril script failed; the message holds the end of its log."""


def find() -> str | None:
    """Path of ``siril-cli`` or None."""
    return shutil.which(EXECUTABLE)


def version(exe: str) -> str:
    """``siril 1.0.6``-style version string."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False, timeout=60)
    return (out.stdout.strip().splitlines() or ["siril ?"])[-1]


def _seconds(value: str, unit: str) -> float:
    return float(value) / (1000.0 if unit == "ms" else 1.0)


def run_script(exe: str, folder: Path, lines: list[str]) -> str:
    """Run ``lines`` as a Siril script in ``folder``; return the log; raise SirilError on failure."""
    script = folder / "bench.ssf"
    script.write_text("\n".join(["requires 1.0.0", f"cd {folder}", *lines]) + "\n")
    proc = subprocess.run([exe, "-s", str(script)], capture_output=True, text=True,
                          check=False, timeout=SCRIPT_TIMEOUT_S, cwd=folder)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Script execution failed" in log:
        tail = "\n".join(line for line in log.splitlines()[-12:] if "progress" not in line)
        raise SirilError(f"siril-cli script in {folder} failed:\n{tail}")
    return log


def command_times(log: str) -> list[float]:
    """Seconds of each sequence operation, in order (``Execution time`` lines)."""
    return [_seconds(v, u) for v, u in _TIME.findall(log)]


def total_time(log: str) -> float:
    """Seconds of the whole script as Siril reports it."""
    found = _TOTAL.findall(log)
    return _seconds(*found[-1]) if found else float("nan")


def write_u16(path: Path, image: np.ndarray) -> None:
    """Write ``image`` as a 16-bit FITS (rounded, clipped to 0..65535)."""
    data = np.clip(np.rint(np.nan_to_num(image)), 0, UNIT).astype(np.uint16)
    fits.PrimaryHDU(data).writeto(path, overwrite=True)


def quantize(image: np.ndarray) -> np.ndarray:
    """What Siril reads from :func:`write_u16`, as float32 (give every tool the same input)."""
    return np.clip(np.rint(np.nan_to_num(image)), 0, UNIT).astype(np.float32)


def read_adu(path: Path) -> np.ndarray:
    """A Siril output in ADU (float outputs are in [0, 1])."""
    with fits.open(path) as hdul:
        data = hdul[0].data
        scale = UNIT if data.dtype.kind == "f" else 1.0
        return (np.asarray(data, dtype=np.float64) * scale).astype(np.float32)


@dataclass
class Affine:
    """``normalized = a * frame + b`` (ADU)."""

    a: float
    b: float

    def apply(self, frame: np.ndarray) -> np.ndarray:
        return np.where(frame != 0, self.a * frame + self.b, 0).astype(np.float32)


def _sequence(folder: Path, name: str, frames: list[np.ndarray]) -> None:
    """``name00001.fit``... and the ``.seq`` file (Siril does not detect one-image sequences)."""
    for k, frame in enumerate(frames, start=1):
        write_u16(folder / f"{name}{k:05d}.fit", frame)
    n = len(frames)
    images = "".join(f"I {k} 1\n" for k in range(1, n + 1))
    (folder / f"{name}.seq").write_text(f"S '{name}' 1 {n} {n} 5 -1 3\nL 1\n{images}")


def linear_match(exe: str, folder: Path, reference: np.ndarray,
                 targets: list[np.ndarray]) -> tuple[list[Affine], float]:
    """``linear_match`` of each target onto ``reference`` (all pixels).

    Returns the fitted functions and the seconds they took: the script's total time
    minus that of the same script without ``linear_match`` (load and save only).
    """
    write_u16(folder / "ref.fit", reference)
    for k, t in enumerate(targets):
        write_u16(folder / f"t{k}.fit", t)
    plain = [c for k in range(len(targets)) for c in (f"load t{k}.fit", f"save io{k}")]
    matched = [c for k in range(len(targets))
               for c in (f"load t{k}.fit", "linear_match ref.fit 0 1", f"save lm{k}")]
    base = total_time(run_script(exe, folder, plain))
    log = run_script(exe, folder, matched)
    fitted = [Affine(a=float(a), b=float(b) * UNIT) for b, a in _FIT.findall(log)]
    if len(fitted) != len(targets):
        raise SirilError(f"linear_match logged {len(fitted)} fits for {len(targets)} frames")
    return fitted, max(total_time(log) - base, 0.0)


def _fit_affine(frame: np.ndarray, normalized: np.ndarray, use: np.ndarray) -> Affine:
    design = np.column_stack([frame[use], np.ones(int(use.sum()))])
    (a, b), *_ = np.linalg.lstsq(design, normalized[use], rcond=None)
    return Affine(float(a), float(b))


def stack_normalization(exe: str, folder: Path, reference: np.ndarray, targets: list[np.ndarray],
                        kind: str) -> tuple[list[Affine], float]:
    """Siril's stacking normalization (``kind`` addscale or mulscale) of each target.

    The coefficients come from stacking the reference with each target alone; the
    time is that of one stack of all frames with normalization minus the same stack
    with ``-norm=no`` (the normalization's own cost).
    """
    ref_q = quantize(reference)
    lines = ["set32bits"]
    for k, t in enumerate(targets):
        _sequence(folder, f"p{k}_", [reference, t])
        lines.append(f"stack p{k}_ {NO_REJECTION} -norm={kind} -out=s{k}")
    run_script(exe, folder, lines)
    out = []
    for k, t in enumerate(targets):
        t_q = quantize(t)
        mean = read_adu(folder / f"s{k}.fit")
        use = (t_q > 0) & (ref_q > 0)
        out.append(_fit_affine(t_q, 2.0 * mean - ref_q, use))
    _sequence(folder, "all_", [reference, *targets])
    log = run_script(exe, folder, ["set32bits",
                                   f"stack all_ {NO_REJECTION} -norm={kind} -out=with",
                                   f"stack all_ {NO_REJECTION} -norm=no -out=without"])
    with_norm, without = command_times(log)[-2:]
    return out, max(with_norm - without, 0.0)


def seqsubsky(exe: str, folder: Path, image: np.ndarray,
              degrees: tuple[int, ...]) -> dict[int, tuple[np.ndarray, float]]:
    """``seqsubsky`` of a one-image sequence at each polynomial degree: result (ADU) and seconds."""
    lines = []
    for d in degrees:
        _sequence(folder, f"d{d}_", [image])
        lines.append(f"seqsubsky d{d}_ {d}")
    times = command_times(run_script(exe, folder, lines))
    if len(times) != len(degrees):
        raise SirilError(f"seqsubsky logged {len(times)} runs for {len(degrees)} degrees")
    return {d: (read_adu(folder / f"bkg_d{d}_00001.fit"), s) for d, s in zip(degrees, times)}
