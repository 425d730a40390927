"""One self-contained HTML triage page of a ``detect`` run: no server, no internet, no external files but
the overlays and triptychs it links to by relative paths.

Thumbnails are embedded as JPEG data URIs, so the page shows every scan even when copied alone; the
full-size overlays and triptychs open from links relative to the page. Scans are sorted by score, most
suspect first; a few lines of inline JavaScript filter by decision or name and re-sort (``page.html#suspect``
opens it showing the suspect scans only). Every scan name and message is HTML-escaped (a file may be called ``<b>&.png``), and every link is percent-encoded.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..atomic import write_text


def thumbnail_uri(picture: np.ndarray, max_width: int, flagged: np.ndarray | None = None, quality: int = 85) -> str:
    """``data:image/jpeg;base64,...`` of ``picture`` (uint8 (H, W, 3) RGB) shrunk to at most ``max_width``
    pixels wide (area averaging, aspect kept).

    flagged: bool (H, W) of the pixels at or above the pixel threshold (the top H rows of ``picture``):
    their alert ring is drawn again on the thumbnail, 2 px wide around them grown by 2 px, since shrinking
    would fade the scan-sized ring and a small region would vanish from the page.
    """
    import cv2

    from .display import draw_outline

    height, width = picture.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        if flagged is not None and flagged.any():
            rows = max(1, round(flagged.shape[0] * max_width / width))
            small = cv2.resize(flagged.astype(np.float32), (max_width, rows), interpolation=cv2.INTER_AREA) > 0
            # Grown by 2 px so that the ring frames even a one-pixel region instead of being a dot.
            small = cv2.dilate(small.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            draw_outline(picture[:rows], small, thickness=2)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {picture.shape} thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def relative_link(target: str | os.PathLike, page: Path) -> str:
    """URL of ``target`` relative to the folder of ``page``, percent-encoded (forward slashes)."""
    relative = os.path.relpath(Path(target).resolve(), page.resolve().parent)
    return quote(Path(relative).as_posix())


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _card(entry: dict, pictures: dict, page: Path, rank: int) -> str:
    decision = "suspect" if entry["anomalous"] else "clean"
    name = Path(entry["input"]).name
    overlay_link = relative_link(entry["output"], page)
    triptych_link = relative_link(entry["triptych"], page) if entry.get("triptych") else None
    regions = "".join(
        f"<tr><td>{r['rank']}</td><td>{' '.join(str(v) for v in r['bbox'])}</td><td>{r['area']}</td>"
        f"<td>{r['peak']:.3f}</td><td>{r['mean']:.3f}</td></tr>" for r in entry["regions"])
    regions = (f"<table class='regions'><tr><th>#</th><th>x y w h</th><th>area px</th><th>peak</th><th>mean</th></tr>"
               f"{regions}</table>" if regions else "<p class='none'>no region above the pixel threshold</p>")
    thumbs = []
    if pictures.get("overlay"):
        thumbs.append(f"<a href='{_e(overlay_link)}' class='overlay-link'><img src='{pictures['overlay']}' "
                      f"alt='overlay of {_e(name)}'></a>")
    if pictures.get("triptych"):
        link = triptych_link or overlay_link
        thumbs.append(f"<a href='{_e(link)}' class='triptych-link'><img src='{pictures['triptych']}' "
                      f"alt='triptych of {_e(name)}'></a>")
    links = f"<a href='{_e(overlay_link)}'>overlay</a>"
    if triptych_link:
        links += f" · <a href='{_e(triptych_link)}'>triptych</a>"
    warnings = "".join(f"<p class='warning'>{_e(w)}</p>" for w in entry.get("warnings", []))
    return (f"<section class='scan {decision}' data-name='{_e(name.lower())}' data-score='{entry['score']!r}' "
            f"data-decision='{decision}' data-rank='{rank}'>"
            f"<header><span class='badge {decision}'>{decision.upper()}</span> <span class='name'>{_e(name)}</span> "
            f"<span class='score'>score <b>{entry['score']:.3f}</b> (threshold {entry['threshold']:.3f})</span> "
            f"<span class='links'>{links}</span></header>"
            f"<div class='body'><div class='thumbs'>{''.join(thumbs)}</div>"
            f"<div class='details'><p class='path'>{_e(entry['input'])}</p>{warnings}{regions}</div></div></section>")


def _error_card(error: dict) -> str:
    name = Path(error["input"]).name
    return (f"<section class='scan error' data-name='{_e(name.lower())}' data-score='-1e308' data-decision='error' "
            f"data-rank='999999'><header><span class='badge error'>ERROR</span> <span class='name'>{_e(name)}</span>"
            f"</header><div class='body'><p class='path'>{_e(error['input'])}</p>"
            f"<p class='warning'>{_e(error['error'])}</p></div></section>")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#15171a;color:#e8e8e8}
h1{font-size:1.3em;margin:0}
.top{position:sticky;top:0;background:#202328;padding:.6em 1em;border-bottom:1px solid #333;z-index:1}
.facts{color:#aaa;font-size:.9em;margin:.3em 0}
.controls label{margin-right:1em}
main{padding:.6em 1em}
.scan{border:1px solid #333;border-left:6px solid #666;border-radius:4px;margin:.6em 0;padding:.4em .6em;background:#1c1f23}
.scan.suspect{border-left-color:#e0413a}.scan.clean{border-left-color:#3aa655}.scan.error{border-left-color:#d99a1e}
.badge{display:inline-block;padding:.1em .5em;border-radius:3px;font-weight:bold;font-size:.85em}
.badge.suspect{background:#e0413a;color:#fff}.badge.clean{background:#3aa655;color:#fff}.badge.error{background:#d99a1e;color:#000}
.name{font-weight:bold}.score{margin-left:1em}.links{margin-left:1em;font-size:.9em}
a{color:#8cc4ff}
.body{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start;margin-top:.4em}
.thumbs{display:flex;gap:.5em;flex-wrap:wrap;align-items:flex-start}
.thumbs img{max-height:220px;border:1px solid #444}
.overlay-link img{max-width:400px}.triptych-link img{max-width:480px}
.details{min-width:240px;flex:1}
.path{color:#888;font-size:.8em;margin:0 0 .3em 0;word-break:break-all}
.warning{color:#f0c060;font-size:.9em}
.regions{border-collapse:collapse;font-size:.85em}.regions td,.regions th{border:1px solid #444;padding:.1em .4em;text-align:right}
.none{color:#888;font-size:.9em}
.hidden{display:none}
"""

_SCRIPT = """
(function(){
  var list=document.getElementById('scans');
  var cards=Array.prototype.slice.call(list.children);
  function apply(){
    var decision=document.getElementById('decision').value;
    var text=document.getElementById('search').value.toLowerCase();
    var order=document.getElementById('order').value;
    var shown=0;
    cards.forEach(function(c){
      var keep=(decision==='all'||c.dataset.decision===decision)&&c.dataset.name.indexOf(text)>=0;
      c.classList.toggle('hidden',!keep); if(keep){shown++;}
    });
    cards.sort(function(a,b){
      if(order==='name'){return a.dataset.name<b.dataset.name?-1:a.dataset.name>b.dataset.name?1:0;}
      var d=parseFloat(b.dataset.score)-parseFloat(a.dataset.score);
      return order==='score-asc'?-d:d;
    });
    cards.forEach(function(c){list.appendChild(c);});
    document.getElementById('shown').textContent=shown;
  }
  ['decision','search','order'].forEach(function(id){
    document.getElementById(id).addEventListener('input',apply);
  });
  var wanted=location.hash.slice(1);
  if(['suspect','clean','error'].indexOf(wanted)>=0){document.getElementById('decision').value=wanted;}
  apply();
  document.body.setAttribute('data-ready','1');
})();
"""


def render_html_report(entries: list[dict], errors: list[dict], pictures: dict[str, dict], page: Path, model: str,
                       threshold_mode: str, complete: bool = True) -> str:
    """The page's text.

    entries: the ``--report`` JSON's ``images`` (input, output, optional triptych, score, anomalous,
    threshold, pixel_threshold, regions, warnings). errors: its ``errors`` (input, error).
    pictures: scan input path -> {"overlay": data URI, "triptych": data URI} (``thumbnail_uri``).
    page: where the page will be written (links are relative to its folder).
    """
    ordered = sorted(entries, key=lambda e: (-e["score"], e["input"]))
    suspect = sum(e["anomalous"] for e in entries)
    thresholds = sorted({(round(e["threshold"], 6), round(e["pixel_threshold"], 6)) for e in entries})
    threshold_text = "; ".join(f"image threshold {t:.3f}, pixel threshold {p:.3f}" for t, p in thresholds) or "none"
    cards = [_card(e, pictures.get(e["input"], {}), page, rank) for rank, e in enumerate(ordered, 1)]
    cards += [_error_card(error) for error in errors]
    status = "" if complete else " <b class='warning'>(run stopped early: not every scan is listed)</b>"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>rtg-anomaly triage: {suspect} suspect of {len(entries)}</title><style>{_STYLE}</style></head><body>"
        f"<div class='top'><h1>rtg-anomaly triage: <span class='count-suspect'>{suspect}</span> suspect, "
        f"{len(entries) - suspect} clean, {len(errors)} error{'' if len(errors) == 1 else 's'}{status}</h1>"
        f"<p class='facts'>model <code>{_e(model)}</code> · overlay mode {_e(threshold_mode)} · {threshold_text} "
        "(calibrated units: 1.0 = the clean level; a scan is suspect when its score is above the image threshold)</p>"
        "<div class='controls'><label>show <select id='decision'><option value='all'>all</option>"
        "<option value='suspect'>suspect</option><option value='clean'>clean</option>"
        "<option value='error'>errors</option></select></label>"
        "<label>name <input id='search' type='search' placeholder='filter by file name'></label>"
        "<label>sort <select id='order'><option value='score-desc'>score, highest first</option>"
        "<option value='score-asc'>score, lowest first</option><option value='name'>name</option></select></label>"
        f"<span class='facts'><span id='shown'>{len(cards)}</span> shown</span></div></div>"
        f"<main id='scans'>{''.join(cards)}</main><script>{_SCRIPT}</script></body></html>\n")


def write_html_report(path: str | os.PathLike, entries: list[dict], errors: list[dict], pictures: dict[str, dict],
                      model: str, threshold_mode: str, complete: bool = True) -> None:
    """Write the page atomically (see ``render_html_report``)."""
    path = Path(path)
    write_text(path, render_html_report(entries, errors, pictures, path, model, threshold_mode, complete))
