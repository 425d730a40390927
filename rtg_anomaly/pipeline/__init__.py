"""The pipeline: the Detector (fit, score, save, load), calibration, stitching, the scale and the selection."""
