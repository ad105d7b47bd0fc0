"""The engine behind the interactive session: the spline cache follows the
parameters, results are slim enough to keep and send, and the intermediates a
GUI draws (star pairs, samples, nodes, rejection circles) are exposed.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgParameters, normalize_frame, prepare_reference
from napari_nsg.io import parse_metadata
from napari_nsg.synthetic import simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))


@pytest.fixture(scope="module")
def pair():
    seq = simulate_sequence(2, (384, 448), seed=11, transmission=[1.0, 0.8], border=12,
                            **FIELD)
    ref, tgt = seq.frame(0), seq.frame(1)
    return ref, tgt


def _model(ref, **params):
    return prepare_reference(ref.data, parse_metadata(ref.header), NsgParameters(**params))


def _with_params(model, **changes):
    """The same reference model with other spline parameters (shares its cache)."""
    return dataclasses.replace(model, params=model.params.with_values(**changes))


@pytest.mark.parametrize("smoothness", [-3.0, 0.0, 1.5])
def test_changed_smoothness_is_not_served_from_a_stale_cache(pair, smoothness):
    ref, tgt = pair
    model = _model(ref)
    first = normalize_frame(model, tgt.data, gradient_images=True)
    assert len(model.spline_cache) == 1  # the shared system was used
    changed = _with_params(model, smoothness=smoothness)
    again = normalize_frame(changed, tgt.data, gradient_images=True)
    fresh = normalize_frame(_model(ref, smoothness=smoothness), tgt.data, gradient_images=True)
    span = float(np.ptp(first.gradient[tgt.valid]))
    # the gradient changes with the smoothness ...
    assert np.max(np.abs(again.gradient - first.gradient)) > 0.01 * span
    # ... and equals what a fresh model with that smoothness gives
    np.testing.assert_allclose(again.gradient, fresh.gradient, atol=1e-4 * span)
    np.testing.assert_allclose(again.corrected, fresh.corrected, atol=1e-4 * span)


def test_cache_keeps_a_bounded_number_of_systems_and_reuses_them(pair):
    from napari_nsg.core.nsg.engine import SPLINE_CACHE_SIZE

    ref, tgt = pair
    model = _model(ref)
    for s in (-2.0, -1.0, 0.0, -2.0):
        normalize_frame(_with_params(model, smoothness=s), tgt.data, keep_corrected=False)
    assert len(model.spline_cache) == SPLINE_CACHE_SIZE
    assert {k[-1] for k in model.spline_cache} == {0.0, -2.0}
