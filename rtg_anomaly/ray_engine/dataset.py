"""Scoring scans inside a user's own Ray Data program: a Dataset of scan paths in, a Dataset of results out.

    import ray
    from rtg_anomaly.ray_engine import score_dataset

    paths = ray.data.from_items([{"path": p} for p in archive_paths])
    results = score_dataset(paths, "model_artifacts/default", concurrency=4, num_gpus=1)
    results.write_parquet("s3://bucket/triage/")

Each actor of the pool loads the bundle once (``ScanScorer.__init__``) and scores its batches with the
code ``detect`` runs: the same scores, decisions and regions, and with ``output_dir`` the same overlay
(and heatmap) files as ``rtg-anomaly detect`` with its default display flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

# The result columns, one row per input row, in input order within a batch.
RESULT_COLUMNS = ("path", "score", "anomalous", "threshold", "pixel_threshold", "n_regions", "top_region", "output",
                  "heatmap", "error")


class ScanScorer:
    """A stateful callable for ``Dataset.map_batches``: scores the scans named in a batch's ``path`` column.

    model: bundle folder (on storage every node sees); device, runtime: as ``Detector.load``.
    output_dir: when given, each scan's overlay is written there under the scan's name, and with
        heatmap_dir its calibrated heatmap as ``<stem>.npy`` (atomic writes; a retried batch writes the
        same bytes again). Scans in one Dataset must then have distinct names.
    detect_flags: extra ``rtg-anomaly detect`` display flags for the overlays, e.g. ``["--threshold",
        "calibrated", "--draw-regions"]``.
    A scan that cannot be read or scored gives a row with ``error`` set (the one-line message) and the
    other columns empty, as ``detect`` skips it; any other failure fails the batch (Ray retries it).
    """

    def __init__(self, model: str, device: str = "auto", runtime: str = "auto", output_dir: str | None = None,
                 heatmap_dir: str | None = None, detect_flags: tuple[str, ...] = ()):
        from ..backbone.features import cuda_device_of
        from ..cli import options as cli_options
        from ..cli.parser import build_parser
        from ..pipeline.detector import Detector

        argv = ["detect", "--input", ".", "--output", output_dir or ".", *detect_flags]
        args = build_parser().parse_args(argv)
        args.style = cli_options.display_style(args)
        self.options = cli_options.output_options(args)
        self.output_dir = Path(output_dir) if output_dir else None
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir else None
        for folder in (self.output_dir, self.heatmap_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        self.detector = Detector.load(model, device=device, runtime=runtime)
        self.gpu = cuda_device_of(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        columns: dict[str, list] = {name: [] for name in RESULT_COLUMNS}
        for path in batch["path"]:
            row = self.score_one(Path(str(path)))
            for name in RESULT_COLUMNS:
                columns[name].append(row.get(name))
        return columns

    def score_one(self, path: Path) -> dict:
        """One scan's result row (see RESULT_COLUMNS)."""
        from ..outputs.regions import find_regions
        from ..outputs.scan_outputs import score_scan, write_scan
        from ..scans.io import load_image
        from ..outputs.triage import format_bbox

        try:
            scored = score_scan(self.detector, path, load_image(path), self.options, self.gpu)
            if self.output_dir is not None:
                heatmap = self.heatmap_dir / f"{path.stem}.npy" if self.heatmap_dir else None
                entry, _ = write_scan(scored, self.output_dir / path.name, heatmap, None, self.options, False)
                regions = [region["bbox"] for region in entry["regions"]]
            else:
                result = scored.result
                regions = [region.bbox for region in find_regions(result.heatmap, result.pixel_threshold,
                                                                  min_area=self.options.min_region_area)]
                entry = {"output": None, "heatmap": None}
        except InputError as exc:
            return {"path": str(path), "error": str(exc)}
        result = scored.result
        return {"path": str(path), "score": result.score, "anomalous": result.anomalous,
                "threshold": result.image_threshold, "pixel_threshold": result.pixel_threshold,
                "n_regions": len(regions), "top_region": format_bbox(regions[0]) if regions else None,
                "output": entry["output"], "heatmap": entry["heatmap"], "error": None}


def score_dataset(paths, model: str, concurrency: int = 1, num_gpus: float = 0, batch_size: int = 4, **scorer):
    """A Dataset of result rows (RESULT_COLUMNS) from a Ray Dataset with a ``path`` column of scan paths.

    concurrency: actors in the pool (each loads the bundle once); num_gpus: GPUs per actor;
    batch_size: scans per call; scorer: ScanScorer's keyword arguments (device, runtime, output_dir,
    heatmap_dir, detect_flags). Lazy, as Ray Data is: nothing runs until the result is consumed.
    """
    return paths.map_batches(ScanScorer, fn_constructor_kwargs={"model": str(model), **scorer},
                             concurrency=concurrency, num_gpus=num_gpus, batch_size=batch_size,
                             batch_format="numpy")
