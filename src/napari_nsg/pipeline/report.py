"""The report of ``napari-nsg normalize``: ``nsg_results.json`` and ``nsg_results.csv``.

One row per input frame, with the columns of DESIGN.md::

    file, output, is_reference, scale[c], transmission[c], snr[c], weight, noise[c],
    n_star_pairs[c], n_samples, altitude, airmass, exposure, date_obs, filter,
    rejected, reject_reason, warnings[], error

In the JSON, per-channel values are lists and ``warnings`` a list; each row
also carries ``relative_weight``, ``relative_transmission``, ``scale_error``,
``offset`` and ``noise_source``, and the top level the reference, the
parameters (as given and as resolved) and whether relative values are per unit
exposure. The JSON also
names the run's working folder (``cwd``, against which relative paths are
resolved) and the frames whose outputs the run may write (``claimed``,
written before any output). The CSV has exactly the DESIGN columns: per-channel values are
joined with ``;`` and warnings with `` | ``; missing values are empty.
Both files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..io import atomic_write_text
from ._values import fmt_value, json_clean

JSON_NAME = "nsg_results.json"
CSV_NAME = "nsg_results.csv"
REPORT_VERSION = 2

CSV_COLUMNS = (
    "file", "output", "is_reference", "scale", "transmission", "snr", "weight", "noise",
    "n_star_pairs", "n_samples", "altitude", "airmass", "exposure", "date_obs", "filter",
    "rejected", "reject_reason", "warnings", "error",
)


@dataclass
class FrameRow:
    """One frame's line of the report (see the module doc for the columns)."""

    file: str
    output: str | None = None
    is_reference: bool = False
    scale: list[float] = field(default_factory=list)
    transmission: list[float] = field(default_factory=list)
    snr: list[float] = field(default_factory=list)
    weight: float | None = None
    noise: list[float] = field(default_factory=list)
    n_star_pairs: list[int] = field(default_factory=list)
    n_samples: int | None = None
    altitude: float | None = None
    airmass: float | None = None
    exposure: float | None = None
    date_obs: str | None = None
    filter: str | None = None
    rejected: bool = False
    reject_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # JSON only
    relative_weight: float | None = None
    relative_transmission: float | None = None
    scale_error: list[float] = field(default_factory=list)
    offset: list[float] = field(default_factory=list)
    noise_source: str | None = None
    gradient_output: str | None = None
    curvature_output: str | None = None
    error_kind: str | None = None  # the error's type, e.g. "OutputExistsError"

    @property
    def ok(self) -> bool:
        """True when the frame was normalized."""
        return self.error is None

    @property
    def mean_transmission(self) -> float:
        """Transmission averaged over channels (NaN for a failed frame)."""
        vals = [v for v in self.transmission if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready values (non-finite numbers become None)."""
        return json_clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "FrameRow":
        """A row read back from the JSON (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def csv_values(self) -> list[str]:
        """The row's CSV cells in :data:`CSV_COLUMNS` order."""
        out = []
        for name in CSV_COLUMNS:
            v = getattr(self, name)
            if name == "warnings":
                out.append(" | ".join(v))
            elif isinstance(v, list):
                out.append(";".join(_fmt(x) for x in v))
            else:
                out.append(_fmt(v))
        return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


@dataclass
class NormalizeReport:
    """What a normalize run produced.

    Attributes
    ----------
    out_dir : pathlib.Path
    reference : str
        The reference file.
    rows : list of FrameRow
        One per input frame, in the order given.
    parameters : dict
        The parameters as given (``None`` = auto).
    resolved : dict
        The parameters after the auto values were filled in.
    per_exposure : bool
        Relative weight and transmission were computed per unit exposure.
    gradient_images : bool
        Whether gradient and curvature images were asked for.
    cwd : str or None
        The working folder of the run: relative paths in the report are relative to it.
    claimed : list of str
        Absolute paths of the frames whose outputs this run may write (written
        before any output, so that ``--resume`` after a crash knows which
        outputs on disk are this run's).
    """

    out_dir: Path
    reference: str
    rows: list[FrameRow]
    parameters: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)
    per_exposure: bool = False
    gradient_images: bool = False
    cwd: str | None = None
    claimed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[FrameRow]:
        """Rows of frames that could not be normalized."""
        return [r for r in self.rows if r.error is not None]

    @property
    def rejected(self) -> list[FrameRow]:
        """Rows of frames flagged by the rejection limits."""
        return [r for r in self.rows if r.rejected]

    @property
    def json_path(self) -> Path:
        return Path(self.out_dir) / JSON_NAME

    @property
    def csv_path(self) -> Path:
        return Path(self.out_dir) / CSV_NAME

    def to_dict(self) -> dict:
        """The JSON document."""
        return {
            "version": REPORT_VERSION,
            "tool": "napari-nsg normalize",
            "reference": self.reference,
            "parameters": json_clean(self.parameters),
            "resolved_parameters": json_clean(self.resolved),
            "per_exposure": self.per_exposure,
            "gradient_images": self.gradient_images,
            "cwd": self.cwd,
            "claimed": list(self.claimed),
            "frames": [r.to_dict() for r in self.rows],
        }

    def csv_text(self) -> str:
        """The CSV document."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in self.rows:
            w.writerow(r.csv_values())
        return buf.getvalue()

    def write(self, *, csv_too: bool = True) -> None:
        """Write ``nsg_results.json`` (and ``.csv``) atomically, replacing old ones."""
        atomic_write_text(self.json_path, json.dumps(self.to_dict(), indent=2) + "\n",
                          overwrite=True)
        if csv_too:
            atomic_write_text(self.csv_path, self.csv_text(), overwrite=True)


def read_report(out_dir: str | Path) -> dict | None:
    """The JSON report in ``out_dir`` as a dict, or None if there is none (or it
    cannot be read)."""
    path = Path(out_dir) / JSON_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not all(
            isinstance(r, dict) and isinstance(r.get("file"), str) for r in frames):
        return None  # not a report of ours
    return doc


def format_table(rows: list[FrameRow], *, truth: dict[str, list[float]] | None = None) -> str:
    """A short fixed-width table of the rows for the terminal.

    Parameters
    ----------
    rows : list of FrameRow
    truth : dict, optional
        ``{file: true scale per channel}``: adds a "true scale" column (demo).
    """
    head = ["frame", "scale", "transm.", "SNR", "weight", "rel.w", "pairs", "samples", "status"]
    if truth is not None:
        head.insert(2, "true scale")
    lines = []
    for r in rows:
        def chan(vals, fmt="{:.4f}"):
            vals = [v for v in vals if v is not None]
            return "/".join(fmt.format(v) for v in vals) if vals else "-"

        status = "reference" if r.is_reference else "ok"
        if r.error is not None:
            status = f"FAILED: {r.error}"
        elif r.rejected:
            status = f"rejected: {r.reject_reason}"
        elif r.warnings:
            status += f" ({len(r.warnings)} warning{'s' if len(r.warnings) > 1 else ''})"
        cells = [Path(r.file).name, chan(r.scale), chan(r.transmission, "{:.3f}"),
                 chan(r.snr, "{:.3f}"), fmt_value(r.weight, ".3f"),
                 fmt_value(r.relative_weight, ".3f"), chan(r.n_star_pairs, "{:d}"),
                 "-" if r.n_samples is None else str(r.n_samples), status]
        if truth is not None:
            t = truth.get(r.file) or truth.get(Path(r.file).name)
            cells.insert(2, chan(t) if t else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the status column is not padded
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip()]
    out += [fmt.format(*c).rstrip() for c in lines]
    return "\n".join(out)
