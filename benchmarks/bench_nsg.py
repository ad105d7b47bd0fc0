"""Benchmark of ``napari-nsg normalize``: time and memory per frame against the I/O floor.

Simulates N mono frames (default 20 x 6000x4000, float32) once into a work
folder, then, in a fresh subprocess for the first 5 and for all N frames:

1. runs :func:`napari_nsg.pipeline.normalize.normalize_frames` on them (the
   first frame is the reference) and times every frame from the progress
   callback, with the process's peak resident memory so far;
2. in the same process, before and after the run, reads each frame with
   ``read_frame`` and writes it back with ``write_frame`` (the I/O floor: what
   any tool that reads and writes the frames must spend; the mean of the two
   passes, since the disk's write-back state changes it by a factor of 3-5).

It prints one table per run (seconds per frame, the I/O floor of that frame,
their ratio, the peak RSS so far), the median ratio, and a summary comparing
the peak memory of the 5- and the N-frame run, which must be the same (one
frame in memory at a time). The first target also builds the reference's
spline system, which the others reuse.

    python benchmarks/bench_nsg.py [--frames 20] [--size 6000x4000] [--workdir DIR]
                                   [--gradient-images]

``--compare-with SRC`` runs another version (its ``src`` folder, e.g. from
``git archive``) and this checkout alternately on the same frames, ``--repeat``
times (default 3), and prints each run's median time per target, its ratio to
each frame's I/O floor and to the fastest floor, the CPU seconds per target
(user + system, and the system part: page faults, copies into the page cache),
then the medians. Each version's floor is measured with its own
``read_frame``/``write_frame``. ``--workers 1,2`` alternates runs with those
worker counts and shows where the time goes: preparing the reference, starting
the workers (fork server or spawn, imports, the reference model shipped once to
each; the size sent to each and its pickling time), the frames, how many of them the
parent normalized itself; with ``--compare-with SRC`` too, it alternates both
versions at each worker count and prints the new/old ratios. For example::

    git archive <old commit> src | tar -x -C /tmp/old
    python benchmarks/bench_nsg.py --frames 12 --compare-with /tmp/old/src
    python benchmarks/bench_nsg.py --frames 12 --workers 1,2
    python benchmarks/bench_nsg.py --frames 12 --workers 1,2 --compare-with /tmp/old/src

``--compare-photometry aperture`` alternates the default parameters (PSF weights) and
``NsgParameters(photometry="aperture")`` the same way (what the fast option saves;
docs/nsg.md "Fourteenth attempt")::

    python benchmarks/bench_nsg.py --frames 12 --compare-photometry aperture

``--accuracy`` prints the accuracy tables of ``docs/nsg.md`` instead, with the
measurements of the tests (``tests/test_nsg_simulated.py`` on six seeds, mono
and RGB; ``tests/test_nsg_real.py`` frame by frame on WASP-12b):

    python benchmarks/bench_nsg.py --accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

CHILD = r"""
import json, pickle, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from _memory import peak_rss_mib
from napari_nsg.io import read_frame, write_frame
from napari_nsg.pipeline import normalize as nz

paths = [Path(p) for p in json.loads(sys.argv[1])]
out = Path(sys.argv[2])
gradient_images = sys.argv[3] == "1"
workers = int(sys.argv[5])
with_floor = sys.argv[6] == "1"
photometry = sys.argv[7] if len(sys.argv) > 7 else ""
params = None
if photometry:
    from napari_nsg.core.nsg import NsgParameters
    params = NsgParameters(photometry=photometry)
peak_mib = peak_rss_mib
events = []
pool = {}
shipped = []
try:  # where the time of local workers goes (absent in older versions)
    from napari_nsg.pipeline import executors
    _start = executors.start_workers
    def start_workers(p, n, **kw):
        t = time.perf_counter()
        ready = _start(p, n, **kw)
        def started(_):
            if all(f.done() and not f.cancelled() and f.exception() is None for f in ready):
                pool["startup_s"] = time.perf_counter() - t
        for f in ready:
            f.add_done_callback(started)
        shipped.append(p._initargs[0])
        return ready
    executors.start_workers = start_workers
    _here = executors._Source.here
    def here(self, taken):  # the frames this process took itself
        for item in _here(self, taken):
            pool["parent_frames"] = pool.get("parent_frames", 0) + 1
            yield item
    executors._Source.here = here
except (ImportError, AttributeError):
    pass
import os, resource, threading
CLOCK = os.sysconf("SC_CLK_TCK")
cpu_of = {}  # descendant pid -> CPU seconds last seen (workers, fork server: not waited for)
def sample_descendants(stop):
    while not stop.wait(0.2):
        parent, cpu = {}, {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    f = open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(entry.name)] = int(f[1])
                cpu[int(entry.name)] = (int(f[11]) + int(f[12])) / CLOCK
        for pid in cpu:
            p = pid
            while p in parent and p != os.getpid() and p > 1:
                p = parent[p]
            if p == os.getpid() and pid != p:
                cpu_of[pid] = max(cpu_of.get(pid, 0.0), cpu[pid])
stop_sampling = threading.Event()
threading.Thread(target=sample_descendants, args=(stop_sampling,), daemon=True).start()
def io_floor():
    times = []
    scratch = Path(tempfile.mkdtemp(prefix="io_floor_", dir=out))
    for p in paths:
        t = time.perf_counter()
        f = read_frame(p)
        write_frame(scratch / p.name, f.data, f.header, overwrite=True)
        times.append(time.perf_counter() - t)
        del f
    shutil.rmtree(scratch)
    return times
cpu_ready = []  # (user, system) CPU s of this process when the reference is ready
def progress(done, total, message):
    events.append((time.perf_counter(), done, message, peak_mib()))
    if message == "reference ready":
        r = resource.getrusage(resource.RUSAGE_SELF)
        cpu_ready.append((r.ru_utime, r.ru_stime, sum(cpu_of.values())))
out.mkdir(parents=True, exist_ok=True)
io_before = io_floor() if with_floor else [float("nan")] * len(paths)
t0 = time.perf_counter()
result = nz.normalize_frames(paths, paths[0], out, params, gradient_images=gradient_images,
                             overwrite=True, progress=progress, workers=workers)
wall = time.perf_counter() - t0
stop_sampling.set()
own = resource.getrusage(resource.RUSAGE_SELF)
cpu_s = own.ru_utime + own.ru_stime + sum(cpu_of.values())
n_targets = max(1, len(paths) - 1)
# the reading process's CPU (a descendant: user and system together) counts as user here
descendants = (sum(cpu_of.values()) - cpu_ready[0][2]) / n_targets
targets_cpu = [(own.ru_utime - cpu_ready[0][0]) / n_targets + descendants,
               (own.ru_stime - cpu_ready[0][1]) / n_targets]
for context in shipped:  # after the run, not to slow it down
    t = time.perf_counter()
    blob = pickle.dumps(context, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(blob)
    pool["context_mib"] = len(blob) / 2**20
    pool["context_s"] = time.perf_counter() - t
ready = [t for t, d, m, _ in events if m == "reference ready"][0]
frames, last = [], ready
for t, done, message, rss in events:
    if done >= 1 and message != "reference ready":
        frames.append({"name": message, "seconds": t - last, "rss": rss})
        last = t
io = ([0.5 * (a + b) for a, b in zip(io_before, io_floor())] if with_floor
      else io_before)
print(json.dumps({"wall": wall, "reference_s": ready - t0, "frames": frames, "io": io,
                  "peak_rss": peak_mib(), "failed": len(result.failed), "pool": pool,
                  "cpu_s": cpu_s, "targets_cpu": targets_cpu,
                  "scales": [r.scale for r in result.rows]}))
"""


def run_child(paths, out, gradient_images, *, workers=1, with_floor=True, source=None,
              photometry=""):
    """One normalize run in a fresh process; ``source``: a ``src`` folder of another
    version of napari-nsg to import instead of the installed one; ``photometry``: the
    ``NsgParameters.photometry`` of the run ('': the default parameters)."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                           str(out), "1" if gradient_images else "0", str(BENCH_DIR),
                           str(workers), "1" if with_floor else "0", photometry],
                          check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # say why, not only that it failed
        sys.exit(f"normalize run ({source or 'this checkout'}) failed:\n{proc.stderr[-4000:]}")
    # cpu_s: CPU seconds of the run's process (I/O floor passes included) and of its
    # descendants (worker processes, fork server), sampled from /proc every 0.2 s
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values):
    return float(statistics.median(values)) if values else float("nan")


def _target_stats(res) -> tuple[float, float]:
    """Median seconds per target frame (the reference, copied, left out) and the
    median ratio to each frame's I/O floor."""
    times = [fr["seconds"] for fr in res["frames"][1:]]
    ratios = [fr["seconds"] / io for fr, io in zip(res["frames"][1:], res["io"][1:])]
    return _median(times), _median(ratios)


def _cpu_per_target(res) -> tuple[float, float]:
    """User and system CPU seconds of the run's process per target, from the reference
    being ready to the end (the reference's own row and the report included; the
    threads of the pipeline and of the engine, and the processes it started, e.g. the
    reading process, sampled from /proc every 0.2 s and counted as user time)."""
    return tuple(res.get("targets_cpu") or (float("nan"), float("nan")))


def compare_versions(paths, work: Path, old_source: Path, repeat: int, gradient_images: bool):
    """Old and new code alternated (old, new, old, new ...) on the same frames: each
    run's median per target frame and its ratio to the I/O floor, then the medians."""
    runs = {"old": [], "new": []}
    print(f"\n{len(paths)} frames, old = {old_source}, new = this checkout; runs alternated")
    print("(s/target: median wall per target; I/O floor: median of the targets' floors, "
          "each version's own read_frame + write_frame; ratio: median of each target's time "
          "over its floor; /fastest: the median time over the run's fastest floor; CPU/target: "
          "user + system s per target of the run's process, sys/target its system part; CPU s: "
          "the whole run, I/O floor passes included)")
    print(f"{'run':<6}{'version':<9}{'s/target':>10}{'I/O floor s':>13}{'ratio':>8}"
          f"{'/fastest':>10}{'CPU/target':>12}{'sys/target':>12}{'wall s':>8}{'CPU s':>7}"
          f"{'peak MiB':>10}")
    for r in range(repeat):
        for name, source in (("old", old_source), ("new", None)):
            res = run_child(paths, work / f"cmp_{name}", gradient_images, source=source)
            t, ratio = _target_stats(res)
            user, system = _cpu_per_target(res)
            fastest = t / min(res["io"][1:])
            runs[name].append((t, ratio, res["cpu_s"], fastest, user + system, system))
            print(f"{r + 1:<6}{name:<9}{t:>10.3f}{_median(res['io'][1:]):>13.3f}{ratio:>8.2f}"
                  f"{fastest:>10.2f}{user + system:>12.3f}{system:>12.3f}{res['wall']:>8.1f}"
                  f"{res['cpu_s']:>7.1f}{res['peak_rss']:>10.0f}", flush=True)
    med = {k: [_median([v[i] for v in runs[k]]) for i in range(6)] for k in runs}
    print(f"medians: old {med['old'][0]:.3f} s per target (ratio to each floor "
          f"{med['old'][1]:.2f}, to the fastest {med['old'][3]:.2f}, CPU {med['old'][4]:.3f} s "
          f"per target, sys {med['old'][5]:.3f}); new {med['new'][0]:.3f} s (ratio "
          f"{med['new'][1]:.2f}, to the fastest {med['new'][3]:.2f}, CPU {med['new'][4]:.3f} s, "
          f"sys {med['new'][5]:.3f}); new/old time {med['new'][0] / med['old'][0]:.2f}, CPU per "
          f"target {med['new'][4] / med['old'][4]:.2f}; CPU s of the runs (I/O floor passes "
          f"included) old {med['old'][2]:.1f}, new {med['new'][2]:.1f}")


def compare_photometry(paths, work: Path, mode: str, repeat: int, gradient_images: bool):
    """The default parameters and ``photometry=mode`` alternated on the same frames, as
    :func:`compare_versions` alternates two versions: each run's median per target, its
    ratio to the I/O floor and the CPU per target, then the medians and their ratios."""
    runs = {"default": [], mode: []}
    print(f"\n{len(paths)} frames, default parameters and photometry={mode} alternated "
          "(columns as --compare-with's)")
    print(f"{'run':<6}{'photometry':<12}{'s/target':>10}{'I/O floor s':>13}{'ratio':>8}"
          f"{'/fastest':>10}{'CPU/target':>12}{'wall s':>8}{'peak MiB':>10}")
    for r in range(repeat):
        for name, record in runs.items():
            res = run_child(paths, work / f"phot_{name}", gradient_images,
                            photometry="" if name == "default" else mode)
            t, ratio = _target_stats(res)
            user, system = _cpu_per_target(res)
            fastest = t / min(res["io"][1:])
            record.append((t, ratio, fastest, user + system))
            print(f"{r + 1:<6}{name:<12}{t:>10.3f}{_median(res['io'][1:]):>13.3f}{ratio:>8.2f}"
                  f"{fastest:>10.2f}{user + system:>12.3f}{res['wall']:>8.1f}"
                  f"{res['peak_rss']:>10.0f}" + (f"  ({res['failed']} FAILED)" if res["failed"]
                                                  else ""), flush=True)
    med = {k: [_median([v[i] for v in runs[k]]) for i in range(4)] for k in runs}
    for name, (t, ratio, fastest, cpu) in med.items():
        print(f"median, {name}: {t:.3f} s per target, ratio to each floor {ratio:.2f}, to the "
              f"fastest {fastest:.2f}, CPU {cpu:.3f} s per target")
    print(f"{mode}/default: time {med[mode][0] / med['default'][0]:.2f}, CPU per target "
          f"{med[mode][3] / med['default'][3]:.2f}")


def compare_workers(paths, work: Path, counts: list[int], repeat: int, gradient_images: bool,
                    old_source: Path | None = None):
    """Runs with each worker count (and each version, with ``old_source``) alternated:
    wall time and where it goes, then the medians and their ratios to the first count."""
    versions = [("old", old_source), ("new", None)] if old_source else [("new", None)]
    print(f"\n{len(paths)} frames; worker counts{' and versions' if old_source else ''} "
          f"alternated, {repeat} rounds (startup: from starting the workers until each holds "
          "the reference model, while the parent normalizes frames itself; model: what each worker is sent (new code: its "
          "large arrays go once through shared memory instead) and pickling + unpickling it once; frames: all after the reference, startup included; parent: "
          "frames the parent normalized itself (new code only); CPU: user + system seconds "
          "of the run and its workers)" + (f"; old = {old_source}" if old_source else ""))
    print(f"{'run':<5}{'version':<9}{'workers':>8}{'wall s':>9}{'reference s':>13}"
          f"{'startup s':>11}{'model MiB':>11}{'model s':>9}{'frames s':>10}{'s/frame':>9}"
          f"{'parent':>8}{'CPU s':>8}")
    walls = {(v, n): [] for v, _ in versions for n in counts}
    for r in range(repeat):
        for version, source in versions:
            for n in counts:
                res = run_child(paths, work / f"workers_{version}_{n}", gradient_images,
                                workers=n, with_floor=False, source=source)
                pool = res["pool"]
                frames_s = res["wall"] - res["reference_s"]
                walls[version, n].append(res["wall"])
                parent = pool.get("parent_frames")
                print(f"{r + 1:<5}{version:<9}{n:>8}{res['wall']:>9.2f}{res['reference_s']:>13.2f}"
                      f"{pool.get('startup_s', float('nan')):>11.2f}"
                      f"{pool.get('context_mib', 0.0):>11.1f}{pool.get('context_s', 0.0):>9.2f}"
                      f"{frames_s:>10.2f}{frames_s / len(paths):>9.3f}"
                      f"{'-' if parent is None else parent:>8}{res['cpu_s']:>8.1f}"
                      + (f"  ({res['failed']} FAILED)" if res["failed"] else ""), flush=True)
    for version, _ in versions:
        base = _median(walls[version, counts[0]])
        print(f"medians ({version}): " + "; ".join(
            f"{n} worker(s) {_median(walls[version, n]):.2f} s "
            f"({_median(walls[version, n]) / base:.2f} x {counts[0]})" for n in counts))
    if old_source:
        print("new/old wall time: " + "; ".join(
            f"{n} worker(s) {_median(walls['new', n]) / _median(walls['old', n]):.2f}"
            for n in counts))


def accuracy() -> None:
    """Print the simulator and WASP-12b accuracy tables (markdown)."""
    import numpy as np

    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path.insert(0, str(tests))
    import test_nsg_simulated as sim

    print("| data | seed | median scale error | max scale error | max residual / sigma "
          "| median residual / sigma | median before / sigma |")
    print("|---|---|---|---|---|---|---|")
    for channels in (1, 3):
        for seed in range(6):
            err, resid, before = sim._run(sim._sequence(channels, seed))
            print(f"| {'mono' if channels == 1 else 'RGB'} | {seed} | {100 * np.median(err):.3f} % "
                  f"| {100 * err.max():.3f} % | {resid.max():.3f} | {np.median(resid):.3f} "
                  f"| {np.median(before):.1f} |")
    import conftest
    import test_nsg_real as real
    from scipy import ndimage

    from napari_nsg.core.nsg import measure_scale, normalize_frame, prepare_reference
    from napari_nsg.io import read_frame

    folder = conftest.REAL_DATA / "wasp12b_calibrated"
    if not folder.is_dir():
        print(f"\n({folder} is missing: no real-data table)")
        return
    frames = {n: read_frame(folder / f"{n}.fits") for n in real.NAMES}
    ref = frames[real.NAMES[0]].data
    model = prepare_reference(ref, frames[real.NAMES[0]].meta)
    stars = real.bright_stars(ref)
    sky = np.median(ref)
    star_free = ~ndimage.binary_dilation(ref > sky + 5 * 1.4826 * np.median(np.abs(ref - sky)),
                                         iterations=12)
    print("\n| frame | offset (px) | scale | photutils | difference | unregistered scale "
          "| background before (ADU) | after (ADU) | drop |")
    print("|---|---|---|---|---|---|---|---|---|")
    import warnings

    for name in real.NAMES[1:]:
        img = frames[name].data
        off = real.independent_offset(ref, img)
        reg = real.into_register(img, off)
        res = normalize_frame(model, reg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ind = float(np.median(real.photutils_flux(ref, stars) / real.photutils_flux(reg, stars)))
        use = (reg != 0) & star_free
        before = real.large_scale_rms(reg - ref, use)
        after = real.large_scale_rms(res.corrected - ref, use)
        raw = measure_scale(model, img).scale[0]
        print(f"| {name} | {off[0]:+.2f}, {off[1]:+.2f} | {res.scale[0]:.4f} | {ind:.4f} "
              f"| {100 * (res.scale[0] / ind - 1):+.2f} % | {raw:.4f} | {before:.2f} "
              f"| {after:.3f} | {100 * (1 - after / before):.1f} % |")


def simulated_frames(work: Path, n: int, width: int, height: int) -> list[Path]:
    """The benchmark's ``n`` frames in ``work`` (simulated once: seed 0, a 40 px
    registration border; reused when present)."""
    frames_dir = work / f"nsg_{width}x{height}_{n}"
    paths = sorted(frames_dir.glob("frame_*.fits"))
    if len(paths) != n:
        from napari_nsg.synthetic import write_sequence

        print(f"simulating {n} frames of {width}x{height} into {frames_dir} ...", flush=True)
        paths = write_sequence(frames_dir, n, (height, width), seed=0, border=40, overwrite=True)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accuracy", action="store_true",
                    help="print the accuracy tables (simulator truth, WASP-12b) instead")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", help="keep the simulated frames here (reused if present)")
    ap.add_argument("--gradient-images", action="store_true",
                    help="also write gradient and curvature images")
    ap.add_argument("--compare-with", metavar="SRC",
                    help="the src folder of another version (e.g. from git archive): run it "
                         "and this checkout alternately on the frames, --repeat times")
    ap.add_argument("--workers", metavar="N,M,...",
                    help="run with these worker counts alternately, --repeat times, and show "
                         "where the time goes (startup, model shipping, frames)")
    ap.add_argument("--compare-photometry", metavar="MODE",
                    help="run the default parameters and photometry=MODE (e.g. aperture) "
                         "alternately on the frames, --repeat times")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.accuracy:
        accuracy()
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_nsg_"))
    paths = simulated_frames(work, args.frames, width, height)
    if args.workers:
        counts = [int(v) for v in args.workers.split(",")]
        compare_workers(paths, work, counts, args.repeat, args.gradient_images,
                        Path(args.compare_with) if args.compare_with else None)
        return
    if args.compare_photometry:
        compare_photometry(paths, work, args.compare_photometry, args.repeat,
                           args.gradient_images)
        return
    if args.compare_with:
        compare_versions(paths, work, Path(args.compare_with), args.repeat, args.gradient_images)
        return
    summary = []
    for n in sorted({min(5, args.frames), args.frames}):
        out = work / f"out_{n}"
        res = run_child(paths[:n], out, args.gradient_images)
        print(f"\n{n} frames of {width}x{height} mono float32 "
              f"(reference prepared in {res['reference_s']:.2f} s, total {res['wall']:.1f} s, "
              f"{res['failed']} failed)")
        print(f"{'frame':<16}{'normalize s':>12}{'I/O floor s':>13}{'ratio':>8}{'peak RSS MiB':>14}")
        ratios = []
        for k, fr in enumerate(res["frames"]):
            io = res["io"][k]
            ratio = fr["seconds"] / io
            tag = " (reference: copied)" if k == 0 else ""
            if k > 0:
                ratios.append(ratio)
            print(f"{fr['name']:<16}{fr['seconds']:>12.3f}{io:>13.3f}{ratio:>8.2f}"
                  f"{fr['rss']:>14.0f}{tag}")
        ratios.sort()
        med = ratios[len(ratios) // 2]
        times = sorted(fr["seconds"] for fr in res["frames"][1:])
        floors = sorted(res["io"][1:])
        t_med = times[len(times) // 2]
        user, system = _cpu_per_target(res)
        print(f"targets: median {t_med:.3f} s per frame; I/O floor {floors[0]:.3f}-{floors[-1]:.3f} s "
              f"(median {floors[len(floors) // 2]:.3f}); ratio to each frame's floor: median "
              f"{med:.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}); to the fastest floor: "
              f"{t_med / floors[0]:.2f}; CPU per target {user + system:.3f} s (user {user:.3f}, "
              f"system {system:.3f}); peak RSS {res['peak_rss']:.0f} MiB")
        summary.append((n, res["peak_rss"], med))
    if len(summary) == 2:
        (n1, r1, _), (n2, r2, _) = summary
        print(f"\npeak RSS: {r1:.0f} MiB for {n1} frames, {r2:.0f} MiB for {n2} frames "
              f"({100 * (r2 / r1 - 1):+.1f} %)")


if __name__ == "__main__":
    main()
