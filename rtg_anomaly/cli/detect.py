"""``rtg-anomaly detect``: score a scan or a folder, write overlays, heatmaps, report, CSV and page."""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import InputError
from . import checks, options
from .exit_codes import EXIT_BAD_INPUT, EXIT_OK


def plan_detect(args: argparse.Namespace):
    """Check every input and output before any work.

    Returns (jobs, folder_mode, output, report, csv_path, html, new_folders); each job is
    (scan path, overlay path, heatmap path or None, triptych path or None); new_folders are output folders still to be
    created, which the caller makes only once nothing else can fail first (no empty folder is left
    behind by a refused run).
    """
    from ..scans.io import IMAGE_SUFFIXES, check_output_path, list_images

    from ..atomic import name_problem

    for flag in ("output", "heatmap", "report", "csv", "sort_into"):
        value = getattr(args, flag)
        problem = value and name_problem(value)
        if problem:
            raise InputError(f"cannot write {value}: {problem}")
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"input {source} does not exist")
    folder_mode = source.is_dir()
    if not 0.0 <= args.threshold_percentile <= 100.0:
        raise InputError("--threshold-percentile must be between 0 and 100")
    args.style = options.display_style(args)
    output = Path(args.output)
    heatmap = Path(args.heatmap) if args.heatmap else None
    triptych = Path(args.triptych) if args.triptych else None
    report = Path(args.report) if args.report else None
    html = Path(args.html) if args.html else None
    if args.min_region_area < 0:
        raise InputError("--min-region-area must be >= 0")
    new_folders: list[Path] = []
    if folder_mode:
        report = report or output / "report.json"
        csv_path = Path(args.csv) if args.csv else output / "triage.csv"
        paths = list_images(source)
        for folder, flag in ((output, "--output"), (heatmap, "--heatmap"), (triptych, "--triptych"),
                             (Path(args.sort_into) if args.sort_into else None, "--sort-into")):
            if folder is not None and checks.check_output_folder(folder, flag, new_folders):
                new_folders.append(folder)
        if checks.same_path(output, source):
            raise InputError(f"--output {output} is the input folder: the overlays would overwrite the scans; "
                             "name another folder")
        # a.png and a.tif in one folder would both write heatmap a.npy: those keep their suffix (a.png.npy).
        stems = collections.Counter(p.stem for p in paths)
        names = {p: f"{p.stem if stems[p.stem] == 1 else p.name}.npy" for p in paths}
        for folder, flag in ((heatmap, "--heatmap"), (triptych, "--triptych")):
            if folder is not None and checks.same_path(folder, source):
                raise InputError(f"{flag} {folder} is the input folder; name another folder")
        triptych_names = {p: f"{names[p][:-len('.npy')]}.png" for p in paths}
        for folder, files in ((output, [p.name for p in paths]), (heatmap, list(names.values())),
                              (triptych, list(triptych_names.values()))):
            if folder is not None:
                checks.check_names_fit(folder, files)
        jobs = [(p, output / p.name, heatmap / names[p] if heatmap else None,
                 triptych / triptych_names[p] if triptych else None) for p in paths]
    else:
        if args.sort_into:
            raise InputError("--sort-into needs a folder as --input")
        csv_path = Path(args.csv) if args.csv else None
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"input {source} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        if output.is_dir():  # an existing folder: the overlay takes the scan's name there
            output = output / source.name
        if heatmap is not None and heatmap.is_dir():
            heatmap = heatmap / f"{source.stem}.npy"
        check_output_path(output)
        if checks.same_path(output, source):
            raise InputError(f"--output {output} is the input scan: the overlay would overwrite it; "
                             "name another file")
        if heatmap is not None:
            check_output_path(heatmap, suffixes=(".npy",))
        if triptych is not None:
            if triptych.is_dir():
                triptych = triptych / f"{source.stem}.png"
            check_output_path(triptych)
            if checks.same_path(triptych, source) or checks.same_path(triptych, output):
                raise InputError(f"--triptych {triptych} is the input scan or the overlay; name another file")
        jobs = [(source, output, heatmap, triptych)]
    for path, suffixes in ((report, (".json",)), (csv_path, (".csv",)), (html, (".html", ".htm"))):
        if path is not None:
            check_output_path(path, suffixes=suffixes, new_folders=new_folders)
    return jobs, folder_mode, output, report, csv_path, html, new_folders


def run(args: argparse.Namespace) -> int:
    """Score ``--input`` (a scan or a folder) with the bundle and write every output asked for; the exit code."""
    options.check_engine(args)
    plan = plan_detect(args)
    args.roi_mask = options.roi_mask(args.roi)
    if args.engine == "ray" and not plan[1]:
        raise InputError("--engine ray needs a folder as --input (one scan runs in-process)")
    model_dir = args.model or options.default_model()
    outputs = [path for job in plan[0] for path in job[1:]] + list(plan[3:6])
    for path in (p for p in outputs if p is not None):
        if checks.same_path(path.parent, model_dir):  # even a new file there makes it "not a bundle" (bundle.py)
            raise InputError(f"cannot write {path}: it is inside the model bundle {model_dir}")
    with options.engine_session(args) as ray, contextlib.ExitStack() as cleanup:
        return _detect_jobs(args, plan, model_dir, ray, cleanup)


def _detect_jobs(args: argparse.Namespace, plan: tuple, model_dir, ray, cleanup: contextlib.ExitStack) -> int:
    """Score the planned scans, in this process (``ray`` None) or on Ray actors, and write the report,
    CSV and page; the per-scan work and the bookkeeping are the same code either way. ``cleanup`` closes the
    scans' decoder when the caller's block ends, however it ends."""
    from tqdm import tqdm

    from ..outputs.triage import triage_row, write_triage_csv

    jobs, folder_mode, output, report, csv_path, html, new_folders = plan
    if ray is None:
        from ..pipeline.detector import Detector
        from ..scans.io import load_image, prefetch

        # The first scans decode in background threads while the model loads (a 16-bit PNG vehicle scan
        # takes a few tenths of a second); a decoding error surfaces only when that scan's turn comes.
        # Closed here, not by the garbage collector: finalised inside another thread's start-up, the decoder's
        # shutdown deadlocked on threading's own lock.
        decoding = cleanup.enter_context(contextlib.closing(prefetch(load_image, [job[0] for job in jobs])))
        scans = itertools.chain([next(decoding)], decoding)
        detector = Detector.load(model_dir, device=args.device, runtime=args.runtime)
        if args.roi is not None:
            options.override_roi(detector, args.roi, args.roi_mask)
        runtime = options.note_runtime(detector)
        calibration = detector.calibration_
        model_facts = {"runtime": runtime, "runtime_label": detector.extractor.runtime_label,
                       "backbone_graph": detector.extractor.graph_info,
                       "method": detector.method_.name, "roi_mode": detector.config.roi,
                       "threshold_rule": {**calibration.rule.to_dict(),
                                          "false_alarm_rate": calibration.false_alarm_rate}}
    else:
        from ..ray_engine.detect import RayFolderDetect

        engine = RayFolderDetect(ray, model_dir, args, jobs, thumbnails=html is not None)  # loads the bundle
        model_facts = {key: engine.info[key] for key in ("runtime", "runtime_label", "backbone_graph", "method",
                                                         "roi_mode", "threshold_rule")}
        if engine.info["runtime_fallback"]:
            print(f"rtg-anomaly: note: the workers run the backbone with torch: {engine.info['runtime_fallback']}",
                  file=sys.stderr)
    for folder in new_folders:
        folder.mkdir(exist_ok=True)
    entries, errors, rows = [], [], []
    thumbnails: dict[str, dict] = {}  # scan path -> its pictures for the HTML page, small and encoded
    warned = collections.Counter()  # warning -> number of scans; each is printed for its first scan only

    def write_results(complete: bool) -> None:
        if report is not None:
            write_json(report, {"model": str(model_dir), "runtime": model_facts["runtime"],
                                 "backbone_graph": model_facts["backbone_graph"],
                                 "engine": args.engine, "threshold_mode": args.threshold,
                                 "threshold_percentile": args.threshold_percentile,
                                 "method": model_facts["method"], "roi_mode": model_facts["roi_mode"],
                                 "threshold_rule": model_facts["threshold_rule"],
                                 "complete": complete, "images": entries, "errors": errors})
        if csv_path is not None:
            write_triage_csv(csv_path, rows)
        if html is not None:
            from ..outputs.html_report import write_html_report

            write_html_report(html, entries, errors, thumbnails, model=str(model_dir), threshold_mode=args.threshold,
                              complete=complete)

    def skip(path: Path, exc: InputError) -> None:
        if not folder_mode:
            raise exc
        print(f"rtg-anomaly: warning: skipped {exc}", file=sys.stderr)
        errors.append({"input": str(path), "error": str(exc)})
        rows.append(triage_row(path, decision="error", error=exc))

    def take(path: Path, outcome) -> None:
        """Take a scan's outcome, in input order: (entry, pictures) as ``scan_outputs.write_scan`` returns them, or the
        InputError that made it a skipped scan."""
        if isinstance(outcome, InputError):
            skip(path, outcome)
            return
        entry, pictures = outcome
        entries.append(entry)
        if pictures:
            thumbnails[entry["input"]] = pictures
        for warning in entry["warnings"]:
            warned[warning] += 1
            if warned[warning] == 1:
                later = " (said once for the folder)" if folder_mode else ""
                print(f"rtg-anomaly: warning: {path}: {warning}{later}", file=sys.stderr)
        rows.append(triage_row(path, score=entry["score"], decision="suspect" if entry["anomalous"] else "clean",
                               regions=[r["bbox"] for r in entry["regions"]]))

    def record(path: Path, written: Future) -> None:
        """Take the entry of a scan whose outputs were being written (in input order)."""
        try:
            outcome = written.result()
        except InputError as exc:
            outcome = exc
        take(path, outcome)

    def keep_what_finished() -> None:
        if folder_mode and rows:
            try:
                write_results(complete=False)
                print(f"rtg-anomaly: stopped after {len(rows)} of {len(jobs)} scans; {report} and {csv_path} "
                      "list those (\"complete\": false)", file=sys.stderr)
            except OSError:
                pass  # the original error is the one to report

    progress = tqdm(total=len(jobs), unit="scan", desc="detect", leave=False, disable=args.quiet or len(jobs) < 2)
    if ray is not None:
        results = engine.results()
        try:
            for index, outcome in results:
                take(jobs[index][0], outcome)
                progress.update(1)
        except BaseException:  # Ctrl-C, a lost cluster: keep the triage of the scans that finished
            for index, outcome in results.finished():  # in input order, past any scan that did not
                take(jobs[index][0], outcome)
            keep_what_finished()
            raise
        finally:
            progress.close()
            engine.close()
        return _detect_summary(args, folder_mode, entries, errors, warned, output, csv_path, html, write_results,
                           model_facts["runtime_label"])

    from ..outputs import scan_outputs

    from ..backbone.features import cuda_device_of

    gpu, scan_options = cuda_device_of(args.device), options.output_options(args)
    # A scan's regions, overlay file, heatmap file and sorted copy are written in a background thread while the
    # next scan is scored: on a GPU, finding the regions and writing the overlay take a third of the scoring time
    # or more (README, "It writes behind"). One write at a time, in input order.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtg-anomaly-write")
    writing: collections.deque[tuple[Path, Future]] = collections.deque()
    writes_behind = 1 if folder_mode else 0  # one scan: its entry is needed at once
    try:
        for (path, overlay_path, heatmap_path, triptych_path), loaded in zip(jobs, scans):
            progress.update(1)
            try:
                scored = scan_outputs.score_scan(detector, path, loaded.result(), scan_options, gpu)
            except InputError as exc:
                while writing:  # the scans before this one first, so that the report keeps the input order
                    record(*writing.popleft())
                skip(path, exc)
                continue
            writing.append((path, writer.submit(scan_outputs.write_scan, scored, overlay_path, heatmap_path,
                                                triptych_path, scan_options, html is not None)))
            while len(writing) > writes_behind:
                record(*writing.popleft())
        while writing:
            record(*writing.popleft())
    except BaseException:  # Ctrl-C or a failure hours into a folder: keep the triage of the scans done
        writer.shutdown(cancel_futures=True)  # waits for a write in progress: its files are complete
        for path, future in writing:  # writes that finished, or failed on a bad scan, are in the report
            if future.done() and not future.cancelled() and isinstance(future.exception(), (InputError, type(None))):
                record(path, future)
        keep_what_finished()
        raise
    finally:
        progress.close()
    writer.shutdown()
    return _detect_summary(args, folder_mode, entries, errors, warned, output, csv_path, html, write_results,
                           model_facts["runtime_label"])


def _detect_summary(args, folder_mode: bool, entries: list, errors: list, warned, output, csv_path, html,
                    write_results, runtime_label: str) -> int:
    """Write the complete report, CSV and page, print the summary line (``runtime_label``: what ran the
    backbone, ``FeatureExtractor.runtime_label``); the exit code."""
    write_results(complete=True)
    flagged = sum(e["anomalous"] for e in entries)
    if folder_mode:
        for warning, count in warned.items():
            print(f"rtg-anomaly: warning: {count} of {len(entries)} scans: {warning}", file=sys.stderr)
        print(f"scored {len(entries)} scans: {flagged} suspect, {len(entries) - flagged} clean, "
              f"{len(errors)} skipped (unreadable or unusable); overlays in {output}, triage in {csv_path}"
              f"{f', page {html}' if html else ''}; backbone on {runtime_label}")
        return EXIT_OK if entries else EXIT_BAD_INPUT
    entry = entries[0]
    print(f"{entry['input']}: score {entry['score']:.3f} (threshold {entry['threshold']:.3f}) -> "
          f"{'SUSPECT' if entry['anomalous'] else 'clean'}, {len(entry['regions'])} region(s); "
          f"overlay {entry['output']}; "
          f"backbone on {runtime_label}")
    return EXIT_OK


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as strict JSON: a NaN or infinite number (which JSON cannot hold; Python would write
    ``NaN``, which other readers refuse) becomes null."""
    from ..atomic import write_text

    write_text(path, json.dumps(finite_json(payload), indent=2, allow_nan=False) + "\n")


def finite_json(value):
    """``value`` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value
