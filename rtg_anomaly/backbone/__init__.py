"""Backbones: the frozen feature extractors and the runtimes and exported graphs that run them."""
