"""``detect --engine ray`` on a folder: actors that each load the bundle once, read scans and write their
outputs with the in-process code (``outputs.scan_outputs``); the driver keeps the report,
CSV and HTML page in input order.

Every output file is written under a temporary name and renamed (``atomic.py``), so a worker killed in the
middle of a scan leaves no half file; the retried scan writes the same bytes again under the same names
(scoring is deterministic, ``sort_into`` keeps an identical copy rather than adding a second), so a
retry never leaves two versions or a duplicate behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .dispatch import OrderedMap
from .workers import driver_folder, enter_driver_folder, exit_hook, maybe_exit, start_actors, unwrap, worker_count

# The detect flags a worker needs to score and write a scan exactly as the in-process run does.
WORKER_OPTIONS = ("style", "threshold", "threshold_percentile", "draw_regions", "colorbar", "min_region_area",
                  "sort_into", "sort_mode", "roi", "roi_mask")


class DetectWorker:
    """One Ray actor: the bundle loaded once, then one call per scan.

    Errors the user can fix (an unreadable scan, an unusable bundle) come back as values (the
    InputError), so that the driver reports them with the in-process wording.
    """

    def __init__(self, model_dir: str, device: str, runtime: str, options: argparse.Namespace,
                 folder: tuple[str, bool] | None = None, hook: str | None = None):
        from ..backbone.features import cuda_device_of
        from ..cli import options as cli_options
        from ..pipeline.detector import Detector

        self.options, self.hook, self.scans_done = cli_options.output_options(options), hook, 0
        self.error: InputError | None = None
        try:
            enter_driver_folder(folder)
            self.detector = Detector.load(model_dir, device=device, runtime=runtime)
            if options.roi is not None:
                cli_options.override_roi(self.detector, options.roi, options.roi_mask)
            extractor = self.detector.extractor
            self.runtime, self.fallback = extractor.runtime, extractor.runtime_fallback
            self.gpu = cuda_device_of(device)
        except InputError as exc:
            self.error = exc

    def info(self) -> dict | InputError:
        """What the report says about the model, or the error that kept the bundle from loading."""
        if self.error is not None:
            return self.error
        calibration = self.detector.calibration_
        return {"runtime": self.runtime, "runtime_fallback": self.fallback,
                "runtime_label": self.detector.extractor.runtime_label,
                "backbone_graph": self.detector.extractor.graph_info, "method": self.detector.method_.name,
                "roi_mode": self.detector.config.roi,
                "threshold_rule": {**calibration.rule.to_dict(), "false_alarm_rate": calibration.false_alarm_rate}}

    def detect(self, job: tuple, thumbnails: bool):
        """Score one scan and write its outputs: ``(entry, pictures)`` as ``scan_outputs.write_scan`` returns them,
        or the InputError that makes the scan a skipped one."""
        from ..outputs.scan_outputs import score_scan, write_scan
        from ..scans.io import load_image

        maybe_exit(self.hook, self.scans_done)
        self.scans_done += 1
        path, overlay_path, heatmap_path, triptych_path = job
        try:
            scored = score_scan(self.detector, path, load_image(path), self.options, self.gpu)
            return write_scan(scored, overlay_path, heatmap_path, triptych_path, self.options, thumbnails)
        except InputError as exc:
            return exc


class RayFolderDetect:
    """The actors of one folder run and the model facts they report.

    ray: the connected ``ray`` module; jobs: (scan, overlay, heatmap or None, triptych or None) paths, as
    ``cli.detect.plan_detect`` lists them (on a cluster they must name the same files on every node: shared
    storage; relative paths are taken from the driver's working folder, which the workers then need).
    InputError when the bundle cannot be loaded.
    """

    def __init__(self, ray, model_dir: str, args: argparse.Namespace, jobs: list[tuple[Path, ...]],
                 thumbnails: bool):
        self.ray, self.jobs, self.thumbnails = ray, jobs, thumbnails
        options = argparse.Namespace(**{name: getattr(args, name) for name in WORKER_OPTIONS})
        count = worker_count(ray, args.workers, args.gpus_per_worker, len(jobs))
        self.actors = start_actors(ray, DetectWorker, count, args.gpus_per_worker, str(model_dir), args.device,
                                   args.runtime, options,
                                   driver_folder([model_dir, *(path for job in jobs for path in job)]), exit_hook())
        infos = [unwrap_value(info) for info in ray.get([actor.info.remote() for actor in self.actors])]
        self.info = infos[0]

    def results(self) -> OrderedMap:
        """Iterate for ``(job index, (entry, pictures) or InputError)`` in input order."""
        return OrderedMap(self.actors, "detect", len(self.jobs), lambda i: (self.jobs[i], self.thumbnails))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def unwrap_value(value):
    """A worker's answer, raising the InputError it carries."""
    if isinstance(value, BaseException):
        raise value
    return value


__all__ = ["DetectWorker", "RayFolderDetect", "unwrap"]
