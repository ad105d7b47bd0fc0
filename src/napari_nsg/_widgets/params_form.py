"""A magicgui form of every ``NsgParameters`` field, built from its ranges and descriptions.

Numbers get spin boxes bounded by ``RANGES``; an "auto" parameter (None by
default) shows "auto" at the bottom of its spin box (one step below its range);
``smoothness`` is a slider; the modes are combo boxes. Each field's tooltip is
its description.
"""

from __future__ import annotations

import dataclasses
import typing

from magicgui.widgets import ComboBox, Container, FloatSlider, FloatSpinBox, SpinBox

from ..core.nsg.params import (DESCRIPTIONS, NO_REFERENCE_MODES, PHOTOMETRY_MODES, RANGES,
                               NsgParameters)

UNBOUNDED = 1e6  # top of a spin box whose range has no upper limit
FLOAT_STEP = {"smoothness": 0.1, "linear_range": 0.01, "min_weight": 0.01,
              "min_transmission": 0.01, "star_flux_tolerance": 0.01, "aperture_growth": 0.01,
              "sample_star_growth": 0.01}
DEFAULT_FLOAT_STEP = 0.1
FLOAT_DECIMALS = 3
CHOICES = {"no_reference": NO_REFERENCE_MODES, "target_detection": ("guided", "full"),
           "photometry": PHOTOMETRY_MODES}
AUTO_TEXT = "auto"
EXTRA_TIPS = {
    "max_star_pairs": "most star pairs measured, brightest first (auto = max(250, stars/20))",
    "min_star_pairs": "fewer usable star pairs than this in a channel gives a warning",
    "pixel_size": "camera pixel size in um (auto = from the header, else 6 um)",
    "focal_length": "focal length in mm (auto = from the header, else 1000 mm)",
    "image_scale": "image scale in arcsec/px (auto = from pixel size and focal length)",
}


def _is_optional(annotation) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "None" in text


def _base_type(name: str, default) -> type:
    hints = typing.get_type_hints(NsgParameters)
    args = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
    return args[0]


def _label(name: str) -> str:
    return name.replace("_", " ")


class ParameterForm(Container):
    """Every NSG parameter, with NSG's defaults.

    Attributes
    ----------
    fields : dict of str to magicgui widget
    """

    def __init__(self, params: NsgParameters | None = None, **kwargs):
        super().__init__(**kwargs)
        params = params or NsgParameters()
        self.fields = {}
        for f in dataclasses.fields(NsgParameters):
            widget = self._make(f.name, f.type, getattr(params, f.name))
            self.fields[f.name] = widget
            self.append(widget)

    def _make(self, name: str, annotation, value):
        tip = DESCRIPTIONS.get(name) or EXTRA_TIPS.get(name, "")
        label = _label(name)
        if name in CHOICES:
            return ComboBox(name=name, label=label, choices=list(CHOICES[name]), value=value,
                            tooltip=tip)
        kind = _base_type(name, value)
        low, high = RANGES.get(name, (None, None))
        optional = _is_optional(annotation)
        if name == "smoothness":
            return FloatSlider(name=name, label=label, min=low, max=high, step=FLOAT_STEP[name],
                               value=value, tooltip=tip, tracking=False)
        step = 1 if kind is int else FLOAT_STEP.get(name, DEFAULT_FLOAT_STEP)
        low = 0 if low is None else low
        bottom = low - step if optional else low
        top = UNBOUNDED if high is None else high
        # an "auto" int is a float box with no decimals: Qt's double spin box shows
        # "auto" at its minimum, superqt's large int spin box cannot
        as_int = kind is int and not optional
        cls = SpinBox if as_int else FloatSpinBox
        opts = {} if as_int else {"step": step}
        widget = cls(name=name, label=label, min=bottom, max=top, value=bottom if value is None
                     else value, tooltip=tip, **opts)
        if not as_int:
            widget.native.setDecimals(0 if kind is int else
                                      FLOAT_DECIMALS if low >= 1e-3 else 4)
            widget.min = bottom  # re-apply after the decimals changed the rounding
            widget._nsg_int = kind is int
        if optional:
            widget.native.setSpecialValueText(AUTO_TEXT)
            widget._nsg_auto = bottom
        return widget

    def values(self) -> dict:
        """The parameters as ``NsgParameters`` keywords ("auto" -> None)."""
        out = {}
        for name, widget in self.fields.items():
            auto = getattr(widget, "_nsg_auto", None)
            value = widget.value
            if getattr(widget, "_nsg_int", False):
                value = round(value)
            out[name] = None if auto is not None and value <= auto else value
        return out

    def set_values(self, **values) -> None:
        """Set fields (None = auto) without checking them."""
        for name, value in values.items():
            widget = self.fields[name]
            auto = getattr(widget, "_nsg_auto", None)
            widget.value = auto if value is None and auto is not None else value

    def parameters(self) -> NsgParameters:
        """The form as validated ``NsgParameters`` (raises ``NsgParameterError``)."""
        return NsgParameters(**self.values())
