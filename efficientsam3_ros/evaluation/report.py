"""Write the evaluation report: report.json (machine-readable) and report.html (self-contained).

Why both: CI and regression scripts diff the JSON; people open the HTML, which embeds its
plots as base64 PNGs so the single file can be attached to an issue or a CI artifact.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from efficientsam3_ros.evaluation import plots


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (JSON has no inf/NaN) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _size_mismatch(scores: dict[str, Any]) -> str:
    """The scores line's note on frames left out because ground truth and image differ in size."""
    n = scores.get("frames_size_mismatch") or 0
    return f"; <b>{n} frames were left out: ground truth and image differ in size</b>" if n else ""


def _table(rows: list[dict[str, Any]], columns: list[str], first: str = "") -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ([first] if first else []) + columns)
    body = []
    for row in rows:
        cells = ([f"<th>{_fmt(row.get('_name'))}</th>"] if first else []) + [
            f"<td>{_fmt(row.get(c))}</td>" for c in columns
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _named_rows(mapping: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"_name": name, **values} for name, values in mapping.items()]


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


CSS = """
body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}.stop{padding:.6em;border-left:4px solid #c33;background:#fee}
.ok{padding:.6em;border-left:4px solid #3a3;background:#efe}code{background:#f4f4f4;padding:0 3px}
"""


def render_html(report: dict[str, Any], figures: dict[str, str | None]) -> str:
    """The HTML page for a report dict (see :func:`write_report`), with the given base64 figures."""
    run, frames, stop = report["run"], report["frames"], report["stop"]
    status_cls = "ok" if stop["reason"] == "completed" else "stop"
    where = "" if stop.get("frame_index") is None else f" at image message {stop['frame_index']}"
    if stop.get("stamp_ns") is not None:
        where += f" (stamp {stop['stamp_ns']} ns)"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>efficientsam3 eval-bag report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>efficientsam3 eval-bag report</h1>",
        f"<p>Bag <code>{html.escape(str(run['bag']))}</code> ({html.escape(str(run.get('storage')))}), "
        f"topic <code>{html.escape(str(run['image_topic']))}</code>, model <code>{html.escape(str(run['model']))}</code>, "
        f"backend <code>{html.escape(str(report['backend'].get('backend')))}</code>, "
        f"concepts: {html.escape(', '.join(run['concepts']))}.</p>",
        f"<p class='{status_cls}'>Stopped: <b>{html.escape(stop['reason'])}</b>{html.escape(where)}. "
        f"{html.escape(stop.get('message') or '')}</p>",
        "<h2>Frames</h2>",
        _table([frames], ["total_seen", "processed", "skipped", "failed", "duplicate_stamps", "wall_fps"]),
    ]
    if report.get("failures"):
        parts += [
            "<h3>Failed messages</h3>",
            _table(report["failures"], ["index", "stamp_ns", "stage", "error"]),
        ]
    parts += [
        "<h2>Latency per stage (ms)</h2>",
        _table(
            _named_rows(report["latency_ms"]),
            ["frames", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps"],
            "stage",
        ),
        _img(figures.get("latency"), "latency per stage"),
        "<h2>Instances per concept</h2>",
        _img(figures.get("instances"), "instances per concept"),
        "<h2>Tracks</h2>",
        f"<p>{report['tracks']['count']} tracks; median length {_fmt(report['tracks']['median_frames'])} frames.</p>",
        _img(figures.get("tracks"), "track lifetimes"),
    ]
    scores = report.get("scores")
    if scores:
        parts += [
            f"<h2>Scores against ground truth ({html.escape(scores['source'])})</h2>",
            f"<p>{scores['frames_evaluated']} frames evaluated; {scores['gt_frames_not_processed']} ground-truth "
            f"frames were not processed; {scores['processed_frames_without_gt']} processed frames had no ground truth"
            f"{_size_mismatch(scores)}.</p>",
            "<h3>Mask IoU and AP (pycocotools, segm)</h3>",
            _table(
                [{"_name": c, **scores["mask_iou"][c], **scores["coco"][c]} for c in scores["mask_iou"]],
                [
                    "gt_instances",
                    "pred_instances",
                    "mean_iou",
                    "matched_mean_iou",
                    "semantic_iou",
                    "AP",
                    "AP50",
                    "AP75",
                ],
                "concept",
            ),
            "<h3>Tracking (motmetrics, mask IoU &ge; 0.5)</h3>",
            _table(
                _named_rows(scores["tracking"]),
                ["mota", "idf1", "num_switches", "motp", "num_false_positives", "num_misses", "num_objects"],
                "concept",
            ),
        ]
    parts += ["<h2>Raw report</h2><details><summary>report.json</summary><pre>"]
    parts += [html.escape(json.dumps(report, indent=1)[:200_000]), "</pre></details></body></html>"]
    return "\n".join(parts)


def write_report(
    report: dict[str, Any], out_dir: str | Path, timings: list[dict[str, float]]
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns their paths.

    ``timings`` (one dict per processed frame) feeds the latency plot; the other plots
    come from the report's own series.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = _json_safe(report)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(safe, indent=2))
    figures = {
        "latency": plots.latency_plot(timings),
        "instances": plots.instances_plot(report["instances_over_time"]),
        "tracks": plots.track_lifetime_plot(report["tracks"]),
    }
    html_path = out / "report.html"
    html_path.write_text(render_html(safe, figures))
    return json_path, html_path
