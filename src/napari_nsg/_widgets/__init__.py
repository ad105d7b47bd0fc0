"""The napari dock widgets of the workbench (Qt through qtpy; no numerical code).

Each widget gathers parameters, calls a Qt-free session
(:mod:`napari_nsg.pipeline.session`) in a worker thread, and shows the results
as layers and plots. The shared base is :mod:`._base` (worker, progress,
cancel, notifications) and :mod:`._layers` (layer upsert, display conventions).
"""
