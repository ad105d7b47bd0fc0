"""Frames not registered to the reference give no numbers (issue 12, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.core.nsg import NsgParameters, prepare_reference
from napari_nsg.core.nsg.engine import NotRegisteredError, measure_scale
from napari_nsg.pipeline.rank import rank_frames
from napari_nsg.synthetic import simulate_sequence
from napari_nsg.synthetic.dithered import simulate_dithered

HINT = "napari-nsg register"
DENSE = dict(n_stars=4000, shape=(600, 800))  # ~500 candidates: chance pairs do happen
FIELD = dict(star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))
DRIFT = 150  # px: the shift of the unregistered frame in the file tests


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dithered_frames_are_refused_unless_within_the_offset_search(seed):
    """Shifts of 30-275 px and rotations: refused; shifts the engine's offset
    search covers: measured (truth scale 1)."""
    params = NsgParameters()
    reach = params.max_offset + params.star_search_radius
    for max_shift, max_angle in ((3.0, 0.0), (60.0, 3.0), (275.0, 0.5)):
        d = simulate_dithered(3, seed=seed, max_shift=max_shift, max_angle=max_angle, **DENSE)
        model = prepare_reference(d.frames[0], params)
        for k in (1, 2):
            off = np.hypot(d.dx[k], d.dy[k])
            if off <= params.max_offset and d.angle_deg[k] == 0:
                assert measure_scale(model, d.frames[k]).scale[0] == pytest.approx(1.0, abs=0.03)
            elif off > reach:
                with pytest.raises(NotRegisteredError, match=HINT):
                    measure_scale(model, d.frames[k])


def test_a_frame_offset_within_the_search_is_measured_with_a_hint_to_register():
    """A few px of drift (inside the offset search, beyond the star search radius): the
    scale is measured, and the warning says how to register the frames."""
    params = NsgParameters()
    d = simulate_dithered(2, seed=5, max_shift=0.0, max_angle=0.0, **DENSE)
    model = prepare_reference(d.frames[0], params)
    shift = int(params.star_search_radius) + 3
    drifted = np.roll(d.frames[1], (shift, -shift), axis=(0, 1))
    result = measure_scale(model, drifted)
    assert result.scale[0] == pytest.approx(1.0, abs=0.03)
    offset = [w for w in result.warnings if w.startswith("frame is offset by")]
    assert offset and HINT in offset[0]


@pytest.mark.parametrize("seed", [3, 4])
def test_a_drifted_dense_frame_is_refused_not_scaled(seed):
    d = simulate_dithered(2, seed=seed, max_shift=0.0, max_angle=0.0, **DENSE)
    model = prepare_reference(d.frames[0], NsgParameters())
    drifted = np.zeros_like(d.frames[1])
    drifted[:, DRIFT:] = d.frames[1][:, :-DRIFT]
    with pytest.raises(NotRegisteredError, match=HINT) as e:
        measure_scale(model, drifted)
    assert "not registered" in str(e.value)
    assert measure_scale(model, d.frames[1]).scale[0] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1])
def test_clouds_are_not_mistaken_for_misregistration(seed):
    """A frame at 6-12 % transmission pairs few stars, but they are at the right places."""
    transmission = [1.0, 0.12, 0.06]
    seq = simulate_sequence(3, (512, 512), seed=seed, transmission=transmission, border=16,
                            **FIELD)
    model = prepare_reference(seq.frame(0).data, NsgParameters())
    for k in (1, 2):
        frame = seq.frame(k)
        truth = float(np.ravel(frame.truth.scale)[0])
        assert measure_scale(model, frame.data).scale[0] == pytest.approx(truth, rel=0.04)


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory):
    """Four registered frames and a fifth drifted by DRIFT px (zero-filled)."""
    folder = tmp_path_factory.mktemp("mixed")
    seq = simulate_sequence(5, (400, 400), seed=5, transmission=[1.0, 0.9, 0.8, 0.95, 0.85],
                            **FIELD)
    paths = seq.write(folder)
    with fits.open(paths[4]) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    drifted = np.zeros_like(data)
    drifted[DRIFT // 2 :, DRIFT:] = data[: -(DRIFT // 2), :-DRIFT]
    fits.PrimaryHDU(drifted, header).writeto(paths[4], overwrite=True)
    return paths


def test_rank_lists_the_unregistered_frame_and_recommends_among_the_others(mixed_set):
    result = rank_frames(mixed_set)
    failed = {f.file: f.error for f in result.failed}
    assert list(failed) == [str(mixed_set[4])]
    assert HINT in failed[str(mixed_set[4])]
    assert result.reference in [str(p) for p in mixed_set[:4]]
    assert len(result.frames) - len(result.failed) == 4


def test_rank_recommends_nothing_when_no_frame_is_registered_to_another(tmp_path, capsys):
    d = simulate_dithered(3, seed=7, max_shift=200.0, max_angle=2.0, **DENSE)
    paths = d.write(tmp_path)
    result = rank_frames(paths)
    assert result.reference is None
    assert len(result.failed) == 3
    assert all(HINT in f.error for f in result.failed)
    # normalize --reference auto says why, not only that no frame could be ranked
    assert main(["normalize", *map(str, paths), "--reference", "auto",
                 "--out", str(tmp_path / "nsg"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no reference could be chosen" in err and HINT in err
    assert "napari-nsg rank lists every frame's reason" in err


def test_normalize_fails_the_unregistered_frame_only(mixed_set, tmp_path, capsys):
    out = tmp_path / "nsg"
    code = main(["normalize", *map(str, mixed_set), "--reference", str(mixed_set[0]),
                 "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert HINT in err and str(mixed_set[4]) in err and "Traceback" not in err
    rows = {r["file"]: r for r in json.loads((out / "nsg_results.json").read_text())["frames"]}
    assert rows[str(mixed_set[4])]["output"] is None
    assert not (out / f"{mixed_set[4].stem}_nsg.fits").exists()
    for p in mixed_set[:4]:
        assert rows[str(p)]["error"] is None
