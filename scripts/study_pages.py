"""The command line the study scripts share: each keeps its results in a JSON file and draws a Markdown page of it."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Callable


def parse_page_args(parser: argparse.ArgumentParser, argv, default_output: Path,
                    render: Callable[[dict], str]) -> argparse.Namespace | None:
    """Add ``--data-root``, ``--output`` (the JSON; the page beside it as ``.md``) and ``--render-only`` to
    ``parser`` and parse ``argv``. With ``--render-only`` the page is drawn again from the JSON and None returned."""
    parser.add_argument("--data-root", default=None, help="default: $RTG_ANOMALY_DATA or ../shared/data")
    parser.add_argument("--output", default=str(default_output))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        output = Path(args.output)
        output.with_suffix(".md").write_text(render(json.loads(output.read_text())))
        return None
    return args


def written_read(output: Path) -> str:
    """The reading written into an earlier run's JSON (kept when the study is run again), else ""."""
    return json.loads(output.read_text()).get("read", "") if output.is_file() else ""


def page_text(lines: list[str], cache: dict) -> str:
    """A study page's Markdown: ``lines``, then the reading kept in ``cache`` (if any)."""
    return "\n".join(lines + (["", cache["read"]] if cache.get("read") else [])) + "\n"


def new_cache(output: Path, machine: str, **fields) -> dict:
    """A study's results, to be filled: when and where it ran, ``fields``, and the reading of an earlier run of
    ``output`` (``written_read``)."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
            **fields, "read": written_read(output)}


def save_cache(output: Path, cache: dict) -> None:
    """Write ``cache`` to ``output`` (after every dataset, so that an interrupted study keeps what it measured)."""
    output.write_text(json.dumps(cache, indent=1) + "\n")
