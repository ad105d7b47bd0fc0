"""napari sample data: simulated frames with known truth (generated, never downloaded)."""

from __future__ import annotations

import numpy as np

from ._layers import image_layer


def make_synthetic_subs() -> list[tuple]:
    """A short simulated sequence of registered sub-frames as one stack layer.

    The frames differ in transparency, sky level and gradient; the slider walks
    through them. Each frame's header and true scale are in ``layer.metadata``.
    """
    from .synthetic import sample_sequence

    seq = sample_sequence()
    frames = list(seq.iter_frames())
    stack = np.stack([f.data for f in frames])
    metadata = {
        "headers": [f.header for f in frames],
        "true_scale": [np.asarray(f.truth.scale).tolist() for f in frames],
        "reference_index": seq.reference,
    }
    return [image_layer(stack, "simulated sub-frames", metadata, colour=False)]


#: ``layer.metadata`` key telling the MSGR widget which image a layer is ("narrow" or "wide").
MSGR_ROLE = "msgr_role"


def make_synthetic_pair() -> list[tuple]:
    """A simulated wide-field / narrow-field pair of the same sky (for MSGR).

    ``napari-nsg demo``'s pair (:func:`napari_nsg.synthetic.sample_pair`). Each layer's
    metadata holds its FITS header, its role for the MSGR widget (:data:`MSGR_ROLE`)
    and ``simulation``: the arguments that re-create the pair and its truth.
    """
    from .synthetic import sample_pair

    pair = sample_pair()
    simulation = {"function": "napari_nsg.synthetic.sample_pair", "seed": pair.seed}
    return [
        image_layer(pair.wide, "simulated wide field",
                    {"header": pair.wide_header, MSGR_ROLE: "wide", "simulation": simulation}),
        image_layer(pair.narrow, "simulated narrow field",
                    {"header": pair.narrow_header, MSGR_ROLE: "narrow",
                     "simulation": simulation}),
    ]
