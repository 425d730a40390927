"""Scans and I/O: reading and writing scans, intensity windows, tiles, regions of interest, synthetic scans and objects."""
