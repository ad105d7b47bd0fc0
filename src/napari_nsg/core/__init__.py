"""Pure numerical core: numpy, scipy, sep and OpenCV only.

Nothing below this package imports napari, magicgui, Qt or the pipeline.
"""
