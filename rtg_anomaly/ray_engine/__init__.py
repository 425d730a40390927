"""Run ``detect`` (a folder) and ``fit`` on a Ray cluster, with the outputs and bundle of the in-process run.

The driver lists the scans and keeps the bookkeeping (report, triage CSV, memory-bank merge, PCA,
calibration); Ray actors, each holding one backbone (and, for detect, one loaded bundle) for the whole
run, read the scans and do the per-scan work. Ray is an optional dependency: ``pip install
'rtg-anomaly[ray]'``; nothing here imports it before it is needed.

Entry points:
    detect_folder / fit_on_ray: what ``--engine ray`` runs (``cli/fit.py``, ``cli/detect.py``).
    ScanScorer, score_dataset: the same scoring inside a user's own Ray Data program.
"""

from __future__ import annotations

from .session import RAY_INSTALL_HINT, import_ray, ray_session

__all__ = ["RAY_INSTALL_HINT", "ScanScorer", "fit_on_ray", "import_ray", "ray_session", "score_dataset"]


def __getattr__(name: str):
    # The Dataset API and the fit engine pull in Detector (torch, timm): only when asked for.
    if name in ("ScanScorer", "score_dataset"):
        from . import dataset

        return getattr(dataset, name)
    if name == "fit_on_ray":
        from .fit import fit_on_ray

        return fit_on_ray
    raise AttributeError(name)
