"""Fuzzing ``read_frame``: mutated FITS files read in watched child processes.

Used by ``tests/test_io_fuzz.py`` (a few hundred mutants) and
``benchmarks/fuzz_read.py`` (thousands). Each mutant must either be read
correctly (float32, the seed's shape) or be rejected with a
:class:`~napari_nsg.io.FrameError` naming the file; any other exception, a hang
past the per-file timeout, a ``MemoryError`` under the child's address-space
limit or a crash of the child counts as a failure.

The children read many files each (a process per file would be slow); a
watchdog kills a child that spends more than ``timeout`` seconds on one file,
records a hang for that file and starts a new child for the rest.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .fits_scan import BLOCK, CARD, scan_fits
from .read import read_frame

GOOD = ("ok", "grown", "frame_error")
"""Outcomes that keep the reader's promise."""
STARTUP_TIMEOUT = 120.0
"""Seconds a child may take to import the reader before it is declared hung."""
_INTS = (-1, -2, -2880, 0, 1, 2, 3, 4, 8, 999, 1000, 65536, 2**31 - 1, 2**31, 2_000_000_000,
         2**62, 2**64, 10**30, -(2**31))
_TEXTS = ("'x'", "T", "F", "1.5", "1E400", "NaN", "", "'", "-0", "+5", "1 2", "'RICE_2'",
          "'IMAGE   '", "'BINTABLE'", "'GZIP_2  '", "'HCOMPRESS_1'", "'NOCOMPRESS'", "'1PB(9)'",
          "'1QB(99)'", "'E'", "-32", "64")
_TARGETS = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BZERO", "BSCALE", "BLANK",
            "PCOUNT", "GCOUNT", "TFIELDS", "TFORM1", "TTYPE1", "ZIMAGE", "ZBITPIX", "ZNAXIS",
            "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZVAL1", "ZVAL2", "XTENSION",
            "EXTEND", "THEAP", "ZQUANTIZ", "ZDITHER0", "ZSCALE", "ZZERO", "OBJCTALT", "EXPTIME",
            "DATE-OBS", "BAYERPAT", "XPIXSZ")


@dataclass
class Seed:
    """A valid file, the cards of its headers and what reading it gives."""

    path: Path
    shape: tuple[int, ...]
    cards: list[tuple[int, str]]  # (byte offset, keyword), END cards included
    data: list[tuple[int, int]]  # (offset, size) of each HDU's data


def _header_values(hdu, **cards):
    for key, value in cards.items():
        hdu.header[key.replace("_", "-")] = value
    return hdu


def write_seeds(folder: str | os.PathLike) -> list[Seed]:
    """Write the valid files mutants are made from, into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    sky = rng.normal(1200.0, 30.0, (48, 64))
    meta = dict(EXPTIME=60.0, OBJCTALT=43.2, DATE_OBS="2024-03-01T21:04:05", XPIXSZ=3.76,
                FOCALLEN=400.0, FILTER="L")
    files = {
        "mono_u16.fits": fits.HDUList([_header_values(
            fits.PrimaryHDU(sky.astype(np.uint16)), BAYERPAT="RGGB", **meta)]),
        "rgb_f32.fits": fits.HDUList([_header_values(
            fits.PrimaryHDU(np.stack([sky[:32, :40]] * 3).astype(np.float32)), **meta)]),
        "mono_table.fits": fits.HDUList([
            _header_values(fits.PrimaryHDU(sky.astype(np.int16)), **meta),
            fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E",
                                                       array=np.arange(20.0))])]),
        "rice_i16.fz": fits.HDUList([fits.PrimaryHDU(), _header_values(fits.CompImageHDU(
            sky.astype(np.int16), compression_type="RICE_1"), **meta)]),
        "gzip_f32.fz": fits.HDUList([fits.PrimaryHDU(), _header_values(fits.CompImageHDU(
            sky.astype(np.float32), compression_type="GZIP_2", quantize_level=16.0), **meta)]),
        "hcomp_i32.fz": fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            sky.astype(np.int32), compression_type="HCOMPRESS_1", tile_shape=(16, 64))]),
    }
    seeds = []
    for name, hdul in files.items():
        path = folder / name
        hdul.writeto(path, overwrite=True)
        seeds.append(_describe(path))
    return seeds


def _describe(path: Path) -> Seed:
    with open(path, "rb") as fh:
        hdus = scan_fits(fh, path)
    raw = path.read_bytes()
    cards, start = [], 0
    for info in hdus:
        for offset in range(start, info.data_start, CARD):
            key = raw[offset : offset + 8].decode("ascii").strip()
            cards.append((offset, key))
            if key == "END":
                break
        start = info.data_start + -(-info.data_bytes // BLOCK) * BLOCK
    data = [(h.data_start, h.data_bytes) for h in hdus if h.data_bytes]
    return Seed(path, read_frame(path).data.shape, cards, data)


def _set_value(raw: bytearray, offset: int, text: str) -> None:
    field = text.rjust(20) if not text.startswith("'") else text.ljust(20)
    raw[offset + 8 : offset + CARD] = ("= " + field).ljust(CARD - 8)[: CARD - 8].encode("ascii")


def set_card(raw: bytearray, key: str, value: str, after: bytes = b"") -> None:
    """Set the value text of the first ``key`` card (after the first ``after`` bytes, if given)."""
    start = raw.find(after) if after else 0
    offset = next(o for o in range(start - start % CARD, len(raw), CARD)
                  if raw[o : o + 8] == key.ljust(8).encode("ascii"))
    _set_value(raw, offset, value)


def _value_for(key: str, old: str, rnd: random.Random) -> str:
    roll = rnd.random()
    try:
        number = int(old.split("/")[0])
    except ValueError:
        number = None
    if number is not None and roll < 0.3:
        return str(number + rnd.choice((-1, 1, -2, 2, -number - 1, number)))
    if roll < 0.75:
        return str(rnd.choice(_INTS))
    return rnd.choice(_TEXTS)


def _mutate_value(raw, seed, rnd):
    present = [(o, k) for o, k in seed.cards if k in _TARGETS] if rnd.random() < 0.7 else []
    offset, key = rnd.choice(present or [c for c in seed.cards if c[1] != "END"])
    old = raw[offset + 10 : offset + CARD].decode("ascii", "replace").strip()
    value = _value_for(key, old, rnd)
    _set_value(raw, offset, value)
    return f"{key} = {value}"


def _insert_card(raw, seed, rnd):
    ends = [o for o, k in seed.cards if k == "END" and (o % BLOCK) < BLOCK - CARD]
    if not ends:
        return _mutate_value(raw, seed, rnd)
    offset = rnd.choice(ends)
    key = rnd.choice(_TARGETS)
    raw[offset : offset + CARD] = key.ljust(8).encode("ascii") + b" " * (CARD - 8)
    _set_value(raw, offset, _value_for(key, "", rnd))
    raw[offset + CARD : offset + 2 * CARD] = b"END".ljust(CARD)
    return f"insert {key}"


def _remove_card(raw, seed, rnd):
    offset, key = rnd.choice(seed.cards)
    block_end = (offset // BLOCK + 1) * BLOCK
    raw[offset:block_end] = raw[offset + CARD : block_end] + b" " * CARD
    return f"remove {key}"


def _flip_header(raw, seed, rnd):
    keys = []
    for _ in range(rnd.randint(1, 3)):
        offset, key = rnd.choice(seed.cards)
        raw[offset + rnd.randrange(CARD)] ^= 1 << rnd.randrange(8)
        keys.append(key)
    return f"bit flips in {' '.join(keys)}"


def _damage_data(raw, seed, rnd):
    start, size = rnd.choice(seed.data)
    count = rnd.randint(1, 64)
    for _ in range(count):
        raw[start + rnd.randrange(size)] = rnd.randrange(256)
    return f"{count} data bytes"


def _truncate(raw, seed, rnd):
    if len(raw) < 2:
        return "no cut"
    blocks = len(raw) // BLOCK
    if blocks and rnd.random() < 0.3:
        cut = rnd.randrange(1, blocks + 1) * BLOCK
    else:
        cut = rnd.randrange(1, len(raw))
    del raw[cut:]
    return f"cut at {cut}"


def _append(raw, seed, rnd):
    kind = rnd.choice(("random", "zeros", "block", "header"))
    if kind == "random":
        extra = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 6000)))
    elif kind == "zeros":
        extra = bytes(rnd.choice((1, 80, 2880, 2881, 5760)))
    elif kind == "block":
        extra = bytes(raw[:BLOCK])
    else:
        extra = b"XTENSION= 'IMAGE   '".ljust(CARD) + bytes(raw[CARD : BLOCK])
    raw.extend(extra)
    return f"append {len(extra)} bytes ({kind})"


_MUTATORS = ((_mutate_value, 40), (_insert_card, 6), (_remove_card, 6), (_flip_header, 16),
             (_damage_data, 10), (_truncate, 10), (_append, 12))
_RESIZING = (_truncate, _append)


def make_mutants(seeds: list[Seed], folder: str | os.PathLike, count: int,
                 seed: int = 0) -> list[tuple[Path, Seed, str]]:
    """Write ``count`` mutants of ``seeds`` (reproducible for a given ``seed``).

    Returns
    -------
    list of (path, seed, description)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    functions, weights = zip(*_MUTATORS)
    mutants = []
    for n in range(count):
        origin = rnd.choice(seeds)
        raw = bytearray(origin.path.read_bytes())
        chosen = rnd.choices(functions, weights, k=2 if rnd.random() < 0.15 else 1)
        chosen.sort(key=lambda f: f in _RESIZING)  # offsets stay valid until the end
        steps = [mutate(raw, origin, rnd) for mutate in chosen]
        path = folder / f"m{n:05d}_{origin.path.name}"
        path.write_bytes(bytes(raw))
        mutants.append((path, origin, "; ".join(steps)))
    return mutants


_CHILD = """
import json, resource, sys, warnings
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
warnings.simplefilter("ignore")
from napari_nsg.io import FrameError, read_frame
print("READY", flush=True)
for line in sys.stdin:
    path = line.rstrip("\\n")
    try:
        data = read_frame(path).data
        out = ["read", str(data.dtype), list(data.shape)]
    except FrameError as exc:
        memory = isinstance(exc.__context__, MemoryError)
        out = ["memory" if memory else "frame_error", str(exc)[:300]]
    except MemoryError as exc:
        out = ["memory", repr(exc)[:300]]
    except BaseException as exc:
        out = ["other", (type(exc).__module__ + "." + type(exc).__name__ + ": " + str(exc))[:300]]
    print(json.dumps(out), flush=True)
"""


def _start_child(paths: list[str], memory_limit: int, child: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", child, str(memory_limit)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    proc.stdin.write("".join(p + "\n" for p in paths).encode())
    proc.stdin.close()
    return proc


def _lines(proc: subprocess.Popen, timeout: float):
    """Yield the child's output lines; None when ``timeout`` passes without one."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    wait = STARTUP_TIMEOUT
    while True:
        while b"\n" not in buffer:
            if not selector.select(wait):
                yield None
                return
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        wait = timeout
        yield line.decode()


def read_in_children(paths: list[str], timeout: float = 5.0, memory_limit: int = 3 * 2**30,
                     child: str = _CHILD) -> list[list]:
    """Read each file in a child process; one result list per path.

    Each result is ``["read", dtype, shape]``, ``["frame_error", message]``,
    ``["other", message]``, ``["memory", message]``, ``["hang", seconds]`` or
    ``["crash", returncode]``. ``child`` is the child's Python code (the
    default reads with ``read_frame``): it gets the address-space limit as its
    argument, prints ``READY``, then one JSON result line per path on stdin.
    """
    results: list[list] = []
    while len(results) < len(paths):
        proc = _start_child(paths[len(results):], memory_limit, child)
        ready = False
        for line in _lines(proc, timeout):
            if line is None:
                break
            if not ready:
                ready = line == "READY"
                continue
            results.append(json.loads(line))
        else:
            line = "eof"
        proc.kill()
        code = proc.wait()
        proc.stdout.close()
        if len(results) < len(paths):
            if not ready:
                raise RuntimeError(f"the fuzz child did not start (exit {code})")
            results.append(["hang", timeout] if line is None else ["crash", code])
    return results


def classify(result: list, path: Path, seed: Seed, what: str = "") -> str:
    """The outcome of one mutant.

    ``ok`` (float32 of the seed's shape), ``grown`` (a mutated NAXISn claims a
    larger image that still lies within the file: read as the header says),
    ``frame_error``, ``wrong`` (any other read), ``unnamed`` (FrameError without
    the file name), ``other``, ``memory``, ``hang`` or ``crash``.
    """
    status = result[0]
    if status == "read":
        shape = tuple(result[2])
        if result[1] == "float32" and shape == seed.shape:
            return "ok"
        grown = np.prod(shape) > np.prod(seed.shape) and re.search(r"\bNAXIS\d", what)
        return "grown" if result[1] == "float32" and grown else "wrong"
    if status == "frame_error" and str(path) not in result[1]:
        return "unnamed"
    return status


def run(count: int, folder: str | os.PathLike, seed: int = 0, batch: int = 200,
        timeout: float = 5.0, memory_limit: int = 3 * 2**30):
    """Make ``count`` mutants in ``folder`` and read them all.

    Returns
    -------
    counts : collections.Counter
        Outcome -> number of mutants.
    failures : list of (path, description, result)
        The mutants whose outcome is not in :data:`GOOD`.
    seconds : float
        Wall time of the reads.
    """
    seeds = write_seeds(Path(folder) / "seeds")
    mutants = make_mutants(seeds, Path(folder) / "mutants", count, seed)
    counts: Counter = Counter()
    failures = []
    t0 = time.perf_counter()
    for first in range(0, len(mutants), batch):
        chunk = mutants[first : first + batch]
        for (path, origin, what), result in zip(chunk, read_in_children([str(m[0]) for m in chunk],
                                                                         timeout, memory_limit)):
            outcome = classify(result, path, origin, what)
            counts[outcome] += 1
            if outcome not in GOOD:
                failures.append((path, what, result))
    return counts, failures, time.perf_counter() - t0
