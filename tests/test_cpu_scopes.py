"""The heap :func:`normalize_frames` runs in (issue 13, round 2): freed large blocks
reused without fresh page faults inside, glibc's defaults back after."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from napari_nsg.io import buffers as buffers_module
from napari_nsg.io.buffers import reused_heap

FRAME_FLOATS = 6000 * 4000  # one 24 Mpx float32 frame: 96 MB, far over glibc's mmap threshold
MIN_FIRST_FAULTS = 40  # 96 MB in 2 MiB huge pages is 46 faults (4 KiB pages: 23 438)


def _faults_of_fresh_frame() -> int:
    """Minor page faults of allocating and filling one 96 MB frame (freed after)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    frame = np.empty(FRAME_FLOATS, np.float32)
    frame.fill(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del frame
    return faults


@pytest.mark.skipif(buffers_module._glibc() is None, reason="glibc's mallopt only")
def test_reused_heap_reuses_a_freed_frame_without_page_faults():
    outside = [_faults_of_fresh_frame() for _ in range(2)]
    assert min(outside) >= MIN_FIRST_FAULTS  # glibc maps and unmaps every 96 MB block
    with reused_heap():
        first = _faults_of_fresh_frame()
        again = [_faults_of_fresh_frame() for _ in range(3)]
    assert first >= MIN_FIRST_FAULTS
    assert max(again) <= first // 10  # the freed block came back as it was
    after = _faults_of_fresh_frame()  # defaults back: fresh pages again
    assert after >= MIN_FIRST_FAULTS


@pytest.mark.skipif(buffers_module._glibc() is None, reason="glibc's mallopt only")
def test_reused_heap_nested_keeps_reusing_until_the_outermost_ends():
    with reused_heap():
        _faults_of_fresh_frame()
        with reused_heap():
            _faults_of_fresh_frame()
        assert _faults_of_fresh_frame() < MIN_FIRST_FAULTS  # still reusing
    assert buffers_module._heap_users[0] == 0


def test_reused_heap_ends_after_an_error():
    with pytest.raises(RuntimeError), reused_heap():
        raise RuntimeError("boom")
    assert buffers_module._heap_users[0] == 0


def test_normalize_frames_leaves_the_heap_as_it_found_it(tmp_path):
    from napari_nsg.io import FrameError
    from napari_nsg.pipeline.normalize import normalize_frames

    with pytest.raises(FrameError, match="nope.fits"):  # the reference is missing
        normalize_frames([tmp_path / "a.fits"], tmp_path / "nope.fits", tmp_path / "out")
    assert buffers_module._heap_users[0] == 0
