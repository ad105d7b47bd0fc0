"""Helpers of ``benchmarks/peers.py``: napari-nsg side by side with Siril, GraXpert, photutils.

* :mod:`.siril` - ``siril-cli`` scripts: ``linear_match``, stacking normalization, ``seqsubsky``;
* :mod:`.graxpert_peer` - GraXpert's interpolation methods in their own Python environment
  (:mod:`.graxpert_runner` runs there);
* :mod:`.photutils_peer` - normalization and gradient removal built on photutils Background2D;
* :mod:`.normalization`, :mod:`.gradient` - the two jobs, scored on the simulator's truth;
* :mod:`.report` - tables and plots.

Nothing here installs anything; a missing peer is reported with the command that installs it.
"""
