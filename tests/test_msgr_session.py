"""MsgrSession (MSGR step by step): same numbers as ``napari-nsg msgr``, only later steps redone,
automatic layer count, refused fits, flattening, cancel, real M67 frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_nsg.cli import main
from napari_nsg.core.msgr import MsgrError, auto_layers, check_fits, msgr
from napari_nsg.io import read_frame, write_frame
from napari_nsg.pipeline.msgr_session import STEPS, MsgrSession
from napari_nsg.pipeline.progress import Cancelled
from napari_nsg.synthetic import simulate_pair
from napari_nsg.synthetic.pair import sample_pair
from napari_nsg.synthetic.scoring import residual_fraction


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("msgr_session")
    pair = sample_pair()  # the demo's and napari's sample pair
    narrow, wide = folder / "narrow.fits", folder / "wide.fits"
    write_frame(narrow, pair.narrow, pair.narrow_header)
    write_frame(wide, pair.wide, pair.wide_header)
    return pair, narrow, wide


@pytest.mark.slow
def test_step_by_step_equals_the_command_line(demo_files, tmp_path, capsys):
    pair, narrow, wide = demo_files
    out = tmp_path / "out.fits"
    assert main(["msgr", str(narrow), str(wide), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    session = MsgrSession.from_files(narrow, wide)
    for step in STEPS:  # one button after the other
        session.run_step(step)
    assert dict(session.computed) == {s: 1 for s in STEPS}
    cli = read_frame(out)
    np.testing.assert_array_equal(session.corrected, cli.data)
    assert cli.header["MSGRLAY"] == session.n_layers
    assert f"layers: {session.n_layers} (automatic:" in printed
    # the automatic N leaves at most 0.05 of the demo pair's gradient (measured 0.03)
    assert residual_fraction(pair, session.corrected) <= 0.05
    assert residual_fraction(pair, pair.narrow) > 0.9
    header = session.header("model")
    assert header["MSGRKIND"] == "model" and header["MSGRLAY"] == session.n_layers


@pytest.mark.slow
def test_a_new_parameter_recomputes_only_the_steps_after_it(demo_files):
    pair, _narrow, _wide = demo_files
    session = MsgrSession(pair.narrow, pair.wide, scale_hint=3.0)
    session.run_all()
    first = session.corrected.copy()
    assert session.update_params(mode="additive") == {"model", "smooth", "apply"}
    session.run_all()
    assert session.computed["register"] == 1 and session.computed["large"] == 1
    assert session.computed["fit"] == 1 and session.computed["model"] == 2
    assert not np.array_equal(first, session.corrected)
    n = session.n_layers
    assert session.update_params(n_layers=n + 1) == {"large", "fit", "model", "smooth", "apply"}
    session.run_step("fit")
    assert session.computed["large"] == 2 and session.computed["fit"] == 2
    assert session.computed["register"] == 1 and session.computed["model"] == 2
    assert session.update_params(n_layers=n + 1) == set()  # unchanged: nothing dropped
    # the same numbers as the one-call recipe with those parameters
    session.run_all()
    ref = msgr(pair.narrow, pair.wide, n_layers=n + 1, mode="additive",
               registration=session.registration)
    np.testing.assert_array_equal(session.corrected, ref.corrected)


def test_products_for_the_widget(demo_files):
    pair = demo_files[0]
    session = MsgrSession(pair.narrow, pair.wide, scale_hint=3.0, remove_stars=True)
    session.run_all()
    stars = session.matched_stars()
    assert len(stars["x"]) == session.registration.n_pairs >= 6
    assert np.median(stars["residual"]) < 0.5
    assert "scale ratio 2.99" in session.registration_text() or "scale ratio 3.00" in session.registration_text()
    assert session.star_mask.dtype == bool and 0.001 < session.star_mask.mean() < 0.5
    scatter = session.fit_scatter()
    fit = session.fits[0]
    assert scatter["b"] == fit.b and len(scatter["wide"]) == len(scatter["narrow"]) > 1000
    np.testing.assert_allclose(scatter["line_y"], fit.a + fit.b * scatter["line_x"])
    dec = session.layers("narrow")
    assert len(dec.layers) == session.n_layers
    np.testing.assert_array_equal(dec.residual, session.large[0])
    factor = session.correction_map()
    # the model's factor, then the last step's spline (docs/msgr.md, step 7)
    np.testing.assert_allclose(session.corrected, pair.narrow * factor - session.spline.surface,
                               rtol=1e-5, atol=1e-3)
    assert session.raw_model.shape == pair.narrow.shape


def test_cancel_during_registration_stops_it():
    pair = simulate_pair((300, 400), seed=0, shift=(6.0, -4.0))
    session = MsgrSession(pair.narrow, pair.wide)  # no hint: the search covers all ratios
    event = threading.Event()
    messages = []

    def progress(done, total, message):
        messages.append(message)
        if message.startswith("matching star patterns:"):
            event.set()

    with pytest.raises(Cancelled):
        session.run_all(progress=progress, cancel=event)
    assert "register" not in session.products and session.computed["register"] == 0
    assert sum(m.startswith("matching star patterns:") for m in messages) == 1


def test_bad_inputs_are_clear_errors():
    pair = simulate_pair((300, 400), seed=0, shift=(6.0, -4.0), channels=3)
    wide2 = np.stack([pair.wide[0], pair.wide[1]])
    with pytest.raises(MsgrError, match="3 channels and the wide 2"):
        MsgrSession(pair.narrow, wide2)
    with pytest.raises(MsgrError, match="unknown mode"):
        MsgrSession(pair.narrow, pair.wide, mode="divide")
    session = MsgrSession(pair.narrow, pair.wide)
    with pytest.raises(MsgrError, match="'fit' has not been run"):
        _ = session.fits
    with pytest.raises(TypeError, match="unknown MSGR parameter"):
        session.update_params(layers=3)


def test_auto_layers_from_size_and_ratio():
    n, why = auto_layers((600, 800), 3.0)
    assert n == 6 and "short side (600 px)" in why
    assert auto_layers((600, 800), 1.5)[0] == 6
    # M67: 323 px short side; 8 layers (the old default) do not fit
    assert auto_layers((323, 512), 2.0)[0] == 5
    # a coarse wide image: its blurred stars must stay in the removed layers
    n, why = auto_layers((600, 800), 6.0)
    assert n == 8 and "+2 for the wide image's 6.00x coarser pixels" in why
    assert auto_layers((323, 512), 6.0)[0] == 7
    assert auto_layers((4000, 6000), 3.0)[0] == 8
    assert auto_layers((600, 800), 12.0)[0] == 8  # never more than 8
    assert auto_layers((40, 60), 3.0)[0] == 2
    n, why = auto_layers((40, 60), 24.0)  # 6 would need a 128 px model: the size limits it
    assert n == 4 and "allows" in why


def test_a_collapsed_fit_is_refused(demo_files):
    pair = demo_files[0]
    res = msgr(pair.narrow, pair.wide, n_layers=4, scale_hint=3.0)
    bad = [type(res.fits[0])(**{**res.fits[0].__dict__, "b": -0.01})]
    with pytest.raises(MsgrError, match="collapsed"):
        check_fits(res.narrow_large, res.wide_large, bad)
    # a slope unrelated to the data: the two halves of the image disagree
    rng = np.random.default_rng(0)
    noise = res.wide_large + rng.normal(0, 50, res.wide_large.shape).astype(np.float32)
    fit = res.fits[0]
    odd = [type(fit)(**{**fit.__dict__, "b": fit.b * 40, "slope_identifiable": 0.9})]
    with pytest.raises(MsgrError, match="poorly determined"):
        check_fits(res.narrow_large, noise, odd)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_flatten_wide_finds_the_wide_gradient_under_a_faint_sky(seed):
    # the wide's 2 % gradient dominates its large scales (faint nebula): the clipped
    # plane follows it (measured correlation 0.99, same peak-to-peak within 2 %)
    pair = sample_pair(seed, nebula_amplitude=10.0, narrow_gradient=150.0,
                       wide_gradient=0.02 * 500.0 * 9)
    session = MsgrSession(pair.narrow, pair.wide, scale_hint=3.0, flatten_wide="plane")
    session.run_all()
    surface, truth = session.flat_surface.surface, pair.wide_gradient
    assert np.corrcoef(surface.ravel(), truth.ravel())[0, 1] > 0.95
    assert np.ptp(surface) == pytest.approx(np.ptp(truth), rel=0.2)
    assert residual_fraction(pair, session.corrected) <= 0.05
    # the collapsed degree-2 fit of this pair is refused and refitted, never applied
    assert 0.07 < session.fits[0].b < 0.14


@pytest.mark.real
@pytest.mark.slow
def test_m67_runs_with_the_automatic_layers(real_data):
    folder = real_data / "m67_wide_narrow"
    session = MsgrSession.from_files(folder / "M67_V.fits", folder / "M6707HH.fits",
                                     mode="additive")
    session.run_all()
    assert session.n_layers == 5 and "automatic" in session.layers_reason
    assert session.registration.scale_ratio == pytest.approx(1 / 0.5028, rel=0.01)
    out = session.corrected
    assert out.shape == (512, 323) and np.isfinite(out).all()
