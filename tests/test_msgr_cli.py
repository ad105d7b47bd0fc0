"""``napari-nsg msgr`` and the file-level runner: outputs, keywords, errors, cancel, real frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_nsg.cli import main
from napari_nsg.io import FrameError, read_frame, write_frame
from napari_nsg.pipeline.msgr import run_msgr
from napari_nsg.pipeline.progress import Cancelled
from napari_nsg.synthetic import simulate_pair
from napari_nsg.synthetic.scoring import residual_fraction


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("msgr")
    pair = simulate_pair((600, 800), scale_ratio=3.0, rotation_deg=25.0, seed=4, gain=25.0,
                         wide_gradient=45.0)
    other = simulate_pair((600, 800), scale_ratio=3.0, seed=9)
    paths = {
        "narrow": folder / "narrow.fits",
        "wide": folder / "wide.fits",
        "other_wide": folder / "other_wide.fits",
        "blank": folder / "blank.fits",
    }
    write_frame(paths["narrow"], pair.narrow, pair.narrow_header)
    write_frame(paths["wide"], pair.wide, pair.wide_header)
    write_frame(paths["other_wide"], other.wide, other.wide_header)
    rng = np.random.default_rng(0)
    write_frame(paths["blank"], (500 + rng.normal(0, 5, (600, 800))).astype(np.float32),
                pair.narrow_header)
    return pair, paths


def test_msgr_writes_corrected_model_and_registered(files, tmp_path, capsys):
    pair, p = files
    out, model, reg = tmp_path / "out.fits", tmp_path / "model.fits", tmp_path / "reg.fits"
    rc = main(["msgr", str(p["narrow"]), str(p["wide"]), "--out", str(out), "--layers", "5",
               "--save-model", str(model), "--save-registered", str(reg), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "registration: scale ratio 3.00" in text and "(headers: 3.0000)" in text
    assert "linear fit (robust): narrow = " in text
    assert "gradient model (5+1 layers, multiplicative): factor " in text
    f = read_frame(out)
    h = f.header
    assert h["MSGRLAY"] == 5 and h["MSGRMODE"] == "multiplicative" and h["MSGRFIT"] == "robust"
    assert h["MSGRSCL"] == pytest.approx(3.0, rel=5e-3)
    assert h["MSGRROT"] == pytest.approx(25.0, abs=0.1)
    assert h["MSGRRES"] < 0.5 and h["MSGRCOV"] == 1.0
    assert h["MSGRB0"] * 9 == pytest.approx(1.0, abs=0.05)
    assert "MSGRA0" in h and h["MSGRWIDE"] == "wide.fits"
    assert any("MSGR.fit0: narrow = " in str(line) for line in h["HISTORY"])
    assert h["EXPTIME"] == pair.narrow_header["EXPTIME"]  # the narrow header is kept
    assert f.data.shape == pair.narrow.shape and f.data.dtype == np.float32
    # the gradient is gone (napari_nsg.synthetic.scoring)
    assert residual_fraction(pair, pair.narrow) > 0.8
    assert residual_fraction(pair, f.data) <= 0.10
    m = read_frame(model)
    assert m.header["MSGRKIND"] == "model" and m.data.shape == pair.narrow.shape
    r = read_frame(reg)
    assert r.header["MSGRKIND"] == "registered" and r.data.shape == pair.narrow.shape
    assert np.all(np.isfinite(r.data))
    assert "CRPIX1" not in r.header  # the wide frame's WCS does not describe the copy


def test_existing_output_needs_overwrite(files, tmp_path, capsys):
    _, p = files
    out = tmp_path / "out.fits"
    out.write_bytes(b"not a fits file")
    rc = main(["msgr", str(p["narrow"]), str(p["wide"]), "--out", str(out), "--layers", "5"])
    assert rc == 2
    assert f"{out}: exists; use --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"not a fits file"
    rc = main(["msgr", str(p["narrow"]), str(p["wide"]), "--out", str(out), "--layers", "5",
               "--mode", "additive", "--remove-stars", "--overwrite", "--quiet"])
    assert rc == 0
    h = read_frame(out).header
    assert h["MSGRMODE"] == "additive" and h["MSGRSTAR"] is True


@pytest.mark.parametrize(
    "which, args, message",
    [
        ("missing", ["{tmp}/nope.fits", "{wide}"], "nope.fits: file not found"),
        ("layers", ["{narrow}", "{wide}", "--layers", "9"],
         "narrow.fits: image is 800x600 px: too small for 9 multiscale layers"),
        ("zero-layers", ["{narrow}", "{wide}", "--layers", "0"], "--layers must be at least 1"),
        ("text-layers", ["{narrow}", "{wide}", "--layers", "many"],
         "expected 'auto' or a whole number, got 'many'"),
        ("other-sky", ["{narrow}", "{other_wide}"],
         "other_wide.fits: cannot be registered onto narrow.fits: no star pattern"),
        ("no-stars", ["{blank}", "{wide}"], "blank.fits: only 0 star(s) detected in the narrow image"),
        ("same-file", ["{narrow}", "{wide}", "--save-model", "{narrow}"],
         "an output cannot replace an input file"),
        ("swapped", ["{wide}", "{narrow}"],
         "the two images look swapped (the narrow-field image is the one with the smaller "
         "pixels)"),
    ],
)
def test_bad_inputs_exit_2_naming_the_file(files, tmp_path, capsys, which, args, message):
    _, p = files
    names = {k: str(v) for k, v in p.items()} | {"tmp": str(tmp_path)}
    argv = ["msgr"] + [a.format(**names) for a in args] + ["--out", str(tmp_path / "o.fits")]
    if "--layers" not in args:
        argv += ["--layers", "5"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.fits").exists()


def test_auto_layers_and_flatten_wide_from_the_command_line(files, tmp_path, capsys):
    _, p = files
    out = tmp_path / "flat.fits"
    rc = main(["msgr", str(p["narrow"]), str(p["wide"]), "--out", str(out), "--quiet",
               "--flatten-wide"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "layers: 6 (automatic: 6 layers (scales above 64 px kept)" in text
    assert "wide flattened (plane)" in text
    h = read_frame(out).header
    assert h["MSGRFLAT"] == "plane" and h["MSGRLAY"] == 6
    assert any("MSGR.layers_reason = automatic" in str(x) for x in h["HISTORY"])


def test_cancel_leaves_no_output(files, tmp_path):
    _, p = files
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(message)
        if message.startswith("large scales"):
            cancel.set()

    with pytest.raises(Cancelled):
        run_msgr(p["narrow"], p["wide"], tmp_path / "o.fits", layers=5, progress=progress,
                 cancel=cancel)
    assert not list(tmp_path.iterdir())
    assert "reading" in seen and "registering the wide image" in seen


def test_runner_reports_and_names_files(files, tmp_path):
    _, p = files
    run = run_msgr(p["narrow"], p["wide"], tmp_path / "o.fits", layers=5)
    s = run.summary()
    assert s["scale_hint"] == pytest.approx(3.0)
    assert s["registration"]["n_pairs"] >= 10
    assert s["outputs"]["corrected"].endswith("o.fits")
    with pytest.raises(FrameError, match="unknown mode"):
        run_msgr(p["narrow"], p["wide"], tmp_path / "o2.fits", mode="divide")


@pytest.mark.real
def test_m67_through_the_command_line(real_data, tmp_path, capsys):
    folder = real_data / "m67_wide_narrow"
    narrow, wide = folder / "M67_V.fits", folder / "M6707HH.fits"
    out = tmp_path / "m67.fits"
    # the La Silla frames are sky-subtracted: a ratio model makes no sense there
    rc = main(["msgr", str(narrow), str(wide), "--out", str(out), "--layers", "7", "--quiet"])
    assert rc == 2
    assert "M67_V.fits: the large scales are not positive" in capsys.readouterr().err
    rc = main(["msgr", str(narrow), str(wide), "--out", str(out), "--layers", "7", "--quiet",
               "--mode", "additive"])
    assert rc == 0
    h = read_frame(out).header
    assert h["MSGRSCL"] == pytest.approx(1 / 0.5028, rel=0.01)
    assert h["MSGRROT"] == pytest.approx(-0.55, abs=0.2)
    assert h["MSGRRES"] < 0.5
    # 323x512 px: 8 layers (9 in the model) do not fit
    rc = main(["msgr", str(narrow), str(wide), "--out", str(tmp_path / "x.fits"), "--quiet",
               "--mode", "additive", "--layers", "8"])
    assert rc == 2
    assert "use at most 7 layers" in capsys.readouterr().err
    # the automatic layer count (the default) fits the size and says why
    rc = main(["msgr", str(narrow), str(wide), "--out", str(tmp_path / "auto.fits"),
               "--quiet", "--mode", "additive"])
    assert rc == 0
    assert "layers: 5 (automatic: 5 layers" in capsys.readouterr().out
    h = read_frame(tmp_path / "auto.fits").header
    assert h["MSGRLAY"] == 5 and h["MSGRLAYA"] is True
