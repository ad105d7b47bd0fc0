"""Every real frame in ../shared/data/real reads as SOURCES.md describes it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.io import read_frame

# file: (width, height, DATE-OBS, EXPTIME or None, median of raw pixels)
# from the per-file table of SOURCES.md
SOURCES = {
    "m67_wide_narrow/M6707HH.fits": (1059, 1059, "29/11/51", 3000.0, 3768),  # 50 min
    "m67_wide_narrow/M67_B.fits": (323, 512, "21/12/90", 80.0, 0),
    "m67_wide_narrow/M67_R.fits": (323, 512, None, None, 0),
    "m67_wide_narrow/M67_V.fits": (323, 512, None, None, 0),
    "ogle_2005blg120/o189499.7s.fts": (201, 201, "2004-10-02T23:40:03", 120.0, 800),
    "ogle_2005blg120/o200350.7s.fts": (201, 201, "2005-03-01T09:29:40", 120.0, 645),
    "ogle_2005blg120/o203450.7s.fts": (201, 201, "2005-03-30T06:24:35", 120.0, 907),
    "ogle_2005blg120/o205041.7s.fts": (201, 201, "2005-04-16T05:05:55", 120.0, 465),
    "ogle_2005blg120/o205998.7s.fts": (201, 201, "2005-04-24T04:55:57", 120.0, 2859),
    "ogle_2005blg120/o207282.7s.fts": (201, 201, "2005-05-18T07:51:07", 120.0, 560),
    "ogle_2005blg120/o208858.7s.fts": (201, 201, "2005-06-06T06:27:43", 120.0, 511),
    "ogle_2005blg120/o210642.7s.fts": (201, 201, "2005-07-07T06:28:53", 120.0, 453),
    "ogle_2005blg120/o211457.7s.fts": (201, 201, "2005-07-17T23:55:44", 120.0, 2820),
    "ogle_2005blg120/o211787.7s.fts": (201, 201, "2005-07-22T01:47:05", 120.0, 717),
    "ogle_2005blg120/o213466.7s.fts": (201, 201, "2005-08-03T05:23:12", 120.0, 368),
    "ogle_2005blg120/o229449.7s.fts": (201, 201, "2006-02-20T08:50:43", 120.0, 834),
    "seestar_m94/Light_M 94_10.0s_IRCUT_20250326-212046.fit": (1080, 1920, "2025-03-27T01:20:32", 10.0, 903),
    "seestar_m94/Light_M 94_10.0s_IRCUT_20250326-212505.fit": (1080, 1920, "2025-03-27T01:24:52", 10.0, 919),
    "seestar_m94/Light_M 94_10.0s_IRCUT_20250327-014513.fit": (1080, 1920, "2025-03-27T05:45:00", 10.0, 657),
    "seestar_m94/Light_M 94_10.0s_IRCUT_20250409-225435.fit": (1080, 1920, "2025-04-09T20:54:22", 10.0, 1162),
    "single/HorseHead.fits": (891, 893, "1990-12-22T13:49:00", 3900.0, 9658),  # 65 min,
    "single/image.fits": (256, 256, "26/10/92", 1200.0, 6856),
    "single/m13.fits": (300, 300, None, None, 122),
    "wasp12b_calibrated/wasp12b_300.fits": (1020, 912, "2010-11-10T07:22:12", 100.0, 269),
    "wasp12b_calibrated/wasp12b_330.fits": (1020, 912, "2010-11-10T08:23:06", 100.0, 270),
    "wasp12b_calibrated/wasp12b_360.fits": (1020, 912, "2010-11-10T09:24:03", 100.0, 272),
    "wasp12b_calibrated/wasp12b_387.fits": (1020, 912, "2010-11-10T10:18:53", 100.0, 296),
    "wasp12b_calibrated/wasp12b_393.fits": (1020, 912, "2010-11-10T10:31:04", 100.0, 394),
    "wasp12b_calibrated/wasp12b_411.fits": (1020, 912, "2010-11-10T11:07:36", 100.0, 351),
    "wasp12b_calibrated/wasp12b_417.fits": (1020, 912, "2010-11-10T11:19:47", 100.0, 556),
    "wasp12b_calibrated/wasp12b_420.fits": (1020, 912, "2010-11-10T11:25:53", 100.0, 1046),
}


def test_every_real_file_is_listed(real_data):
    found = {
        str(p.relative_to(real_data))
        for p in real_data.rglob("*")
        if p.is_file() and p.suffix.lower() in (".fits", ".fit", ".fts")
    }
    assert found == set(SOURCES)


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_real_frame_matches_sources(real_data, name):
    width, height, date_obs, exposure, median = SOURCES[name]
    frame = read_frame(real_data / name)
    assert frame.data.dtype == np.float32
    assert frame.data.shape == (height, width)
    meta = frame.meta
    if date_obs is None:
        assert meta.date_obs is None
    else:
        assert meta.date_obs.startswith(date_obs)
        assert meta.time is not None
    if exposure is None:
        assert meta.exposure is None
    else:
        assert meta.exposure == pytest.approx(exposure)
    # the raw-pixel median of SOURCES.md (BZERO applied); "~0" for the sky-subtracted M67 frames
    med = float(np.median(frame.data))
    if median == 0:
        assert abs(med) < 20
    else:
        assert med == pytest.approx(median, rel=0.01, abs=1.5)


@pytest.mark.real
def test_wasp12b_metadata(real_data):
    m = read_frame(real_data / "wasp12b_calibrated/wasp12b_300.fits").meta
    assert m.filter == "(2) r (530-700)"
    assert m.altitude == pytest.approx(68.94, abs=0.01)  # ALT_OBJ
    assert m.airmass == pytest.approx(1.0714, abs=1e-4) and m.airmass_source == "header"


@pytest.mark.real
def test_seestar_is_raw_grbg_with_image_scale(real_data):
    path = real_data / "seestar_m94/Light_M 94_10.0s_IRCUT_20250326-212046.fit"
    raw = read_frame(path)
    assert raw.meta.bayer_pattern == "GRBG"
    assert raw.meta.pixel_size == pytest.approx(2.9)
    assert raw.meta.focal_length == pytest.approx(250)
    assert raw.meta.image_scale == pytest.approx(2.39, abs=0.01)  # SOURCES: about 2.39"/px
    rgb = read_frame(path, debayer="superpixel")
    assert rgb.data.shape == (3, 960, 540)
    # SOURCES: sky (2x2 superpixel sum) ~ 3630 on this frame
    assert float(np.median(rgb.data.sum(axis=0))) + float(np.median(rgb.data[1])) == pytest.approx(
        3630, rel=0.03
    )


@pytest.mark.real
def test_image_scales_of_the_wide_frames(real_data):
    assert read_frame(real_data / "m67_wide_narrow/M6707HH.fits").meta.image_scale == pytest.approx(
        1.70, abs=0.01
    )
    for name in ("single/m13.fits", "single/HorseHead.fits"):
        assert read_frame(real_data / name).meta.image_scale == pytest.approx(1.0, abs=0.02)


@pytest.mark.real
def test_ogle_airmass(real_data):
    assert read_frame(real_data / "ogle_2005blg120/o189499.7s.fts").meta.airmass == pytest.approx(1.097)
