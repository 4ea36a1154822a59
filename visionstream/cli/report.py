"""`visionstream report`: the questions people ask of the results, as tables (text, CSV, JSON) and PNG charts.

Every table is one parameterised query over the tables and the views of migrations 0007, 0009 and 0011; ``--prefix``
limits the image tables to keys under it and ``--since`` every table to recent rows. Charts are drawn
with matplotlib's Agg backend in a thread, off the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import decimal
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from visionstream.settings import Settings

HISTOGRAM_BINS = 20
TOP_CATEGORIES = 10

# Parameters by name, bound as $n by bind(): :prefix (image keys, '' for all), :since (timestamptz or NULL)
# and :bucket (minute, hour or day).
QUERIES: dict[str, tuple[str, str]] = {
    "top_categories": ("Top categories (rank 1) per model version", f"""
        SELECT model, category, images, mean_confidence FROM (
            SELECT model, category, count(*) AS images, round(avg(confidence)::numeric, 3) AS mean_confidence,
                   row_number() OVER (PARTITION BY model ORDER BY count(*) DESC, category) AS place
            FROM top1_results WHERE starts_with(image_key, :prefix) AND (:since::timestamptz IS NULL OR time >= :since)
            GROUP BY model, category) ranked
        WHERE place <= {TOP_CATEGORIES} ORDER BY model, place"""),
    "accuracy": ("Accuracy per model version (labels that are ImageNet wnids)", """
        SELECT h.model, count(*) AS images,
               count(*) FILTER (WHERE hit_rank = 1) AS top1_correct,
               count(*) FILTER (WHERE hit_rank <= 5) AS top5_correct,
               round(avg((coalesce(hit_rank, 99) = 1)::int)::numeric, 4) AS top1_accuracy,
               round(avg((coalesce(hit_rank, 99) <= 5)::int)::numeric, 4) AS top5_accuracy
        FROM accuracy_hits h JOIN top1_results t USING (model, image_key)
        WHERE starts_with(h.image_key, :prefix) AND (:since::timestamptz IS NULL OR t.time >= :since)
        GROUP BY h.model ORDER BY h.model"""),
    "comparison": ("Version comparison (top-1 of images both versions classified)", """
        SELECT model_old, model_new, count(*) AS images,
               count(*) FILTER (WHERE category_old = category_new) AS agreeing,
               round(avg((category_old = category_new)::int)::numeric, 4) AS agreement_rate,
               round(avg(confidence_new - confidence_old)::numeric, 4) AS mean_confidence_shift
        FROM top1_pairs p
        WHERE starts_with(image_key, :prefix) AND (:since::timestamptz IS NULL OR EXISTS (
            SELECT 1 FROM top1_results t WHERE t.image_key = p.image_key AND t.model = p.model_new
            AND t.time >= :since))
        GROUP BY model_old, model_new ORDER BY model_old, model_new"""),
    "throughput": ("Images classified per time bucket, host and model version", """
        SELECT date_trunc(:bucket, time) AS bucket, hostname, model, count(*) AS images,
               round(count(*) / extract(epoch FROM ('1 ' || :bucket)::interval)::numeric, 2) AS images_per_second
        FROM top1_results WHERE starts_with(image_key, :prefix) AND (:since::timestamptz IS NULL OR time >= :since)
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
    "faces": ("Faces per camera and time bucket (processed frames)", """
        SELECT date_trunc(:bucket, captured_at) AS bucket, camera_id, count(*) AS frames,
               sum(face_count) AS faces, round(avg(face_count)::numeric, 2) AS faces_per_frame
        FROM frame_results  -- frames no detector ran on (a classify-only camera) have no face count
        WHERE status = 'processed' AND face_count IS NOT NULL
          AND (:since::timestamptz IS NULL OR captured_at >= :since)
        GROUP BY 1, 2 ORDER BY 1, 2"""),
    "visitors": ("Visits and distinct visitors per camera and time bucket (migrations 0011, 0012)", """
        SELECT date_trunc(:bucket, first_seen) AS bucket, camera_id, count(*) AS visits,
               count(DISTINCT coalesce('person:' || person, 'visitor:' || visitor::text, visit_id)) AS visitors,
               sum(frames) AS faces,
               round(avg(extract(epoch FROM last_seen - first_seen))::numeric, 2) AS mean_seconds
        FROM visits WHERE (:since::timestamptz IS NULL OR first_seen >= :since)
        GROUP BY 1, 2 ORDER BY 1, 2"""),
    "coverage": ("Analysed share of frames per camera (processed, or skipped by reason)", """
        SELECT camera_id, coalesce(skip_reason, 'processed') AS outcome, count(*) AS frames,
               round(count(*)::numeric / sum(count(*)) OVER (PARTITION BY camera_id), 4) AS share
        FROM frame_results WHERE (:since::timestamptz IS NULL OR captured_at >= :since)
        GROUP BY 1, 2 ORDER BY 1, 2"""),
    "face_versions": ("Detector versions compared on frames (face counts per camera; migration 0009)", """
        SELECT model_old, model_new, camera_id, count(*) AS frames, count(*) FILTER (WHERE change = 0) AS same_count,
               count(*) FILTER (WHERE change > 0) AS more_faces, count(*) FILTER (WHERE change < 0) AS fewer_faces,
               sum(faces_old) AS faces_old, sum(faces_new) AS faces_new
        FROM frame_face_count_pairs WHERE (:since::timestamptz IS NULL OR captured_at >= :since)
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
    "errors": ("Errors by stage", """
        SELECT stage, count(*) AS errors, count(DISTINCT image_key) AS keys,
               count(*) FILTER (WHERE retried_at IS NOT NULL) AS retried, max(time) AS last_at
        FROM processing_errors WHERE starts_with(image_key, :prefix) AND (:since::timestamptz IS NULL OR time >= :since)
        GROUP BY stage ORDER BY errors DESC, stage"""),
}

HISTOGRAM = """
SELECT model, least(width_bucket(confidence, 0, 1, $3), $3) AS bin, count(*) AS images
FROM top1_results WHERE starts_with(image_key, $1) AND ($2::timestamptz IS NULL OR time >= $2)
GROUP BY 1, 2 ORDER BY 1, 2
"""


_PARAMETER = re.compile(r"(?<!:):(prefix|since|bucket)\b")


def bind(query: str, values: dict[str, object]) -> tuple[str, list[object]]:
    """The query with its :name parameters as $1, $2 ... and their values, in order of first use."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in order:
            order.append(match[1])
        return f"${order.index(match[1]) + 1}"

    return _PARAMETER.sub(number, query), [values[name] for name in order]


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[tuple[object, ...]]


def _plain(value: object) -> object:
    """A cell as JSON and CSV show it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


async def fetch_tables(settings: Settings, names: list[str], prefix: str = "", since: dt.datetime | None = None,
                       bucket: str = "hour") -> list[Table]:
    from visionstream.core.db import (
        connect,  # not at the top: `visionstream --help` lists QUERIES
    )

    conn = await connect(settings)
    try:
        tables = []
        async with conn.transaction(readonly=True):
            for name in names:
                title, query = QUERIES[name]
                sql, args = bind(query, {"prefix": prefix, "since": since, "bucket": bucket})
                statement = await conn.prepare(sql)
                columns = [attribute.name for attribute in statement.get_attributes()]
                rows = await statement.fetch(*args)
                tables.append(Table(name, title, columns, [tuple(_plain(v) for v in row) for row in rows]))
        return tables
    finally:
        await conn.close()


def format_text(tables: list[Table]) -> str:
    out = []
    for table in tables:
        cells = [table.columns] + [["" if v is None else str(v) for v in row] for row in table.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        out.append(f"{table.title}\n" + "\n".join(lines) + ("\n(no rows)" if not table.rows else ""))
    return "\n\n".join(out) + "\n"


# A spreadsheet runs a cell starting with one of these as a formula (OWASP, "CSV injection"); camera ids,
# image keys, person names and categories come from whoever wrote the messages.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, quoted with a leading apostrophe; others as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def format_csv(tables: list[Table]) -> str:
    """One CSV block per table, each headed by a ``# name`` line (one table alone: plain CSV); text cells
    that a spreadsheet would run as formulas are quoted (spreadsheet_safe)."""
    out = io.StringIO()
    for index, table in enumerate(tables):
        if len(tables) > 1:
            out.write(("\n" if index else "") + f"# {table.name}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.columns)
        writer.writerows([spreadsheet_safe(cell) for cell in row] for row in table.rows)
    return out.getvalue()


def format_json(tables: list[Table]) -> str:
    return json.dumps({t.name: [dict(zip(t.columns, row, strict=True)) for row in t.rows] for t in tables},
                      indent=2) + "\n"


async def fetch_histograms(settings: Settings, prefix: str, since: dt.datetime | None) -> dict[str, list[int]]:
    """Rank-1 confidence counts in HISTOGRAM_BINS bins per model version, counted by PostgreSQL."""
    from visionstream.core.db import (
        connect,  # not at the top: `visionstream --help` lists QUERIES
    )

    conn = await connect(settings)
    try:
        rows = await conn.fetch(HISTOGRAM, prefix, since, HISTOGRAM_BINS)
    finally:
        await conn.close()
    histograms: dict[str, list[int]] = {}
    for row in rows:
        histograms.setdefault(row["model"], [0] * HISTOGRAM_BINS)[row["bin"] - 1] = row["images"]
    return histograms


def draw_plots(directory: Path, tables: dict[str, Table], histograms: dict[str, list[int]]) -> list[Path]:
    """The PNG charts; a chart without data is not drawn. Runs in a worker thread."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and safe outside the main thread
    # Labels are camera ids, host names and model names as written: "$...$" in one must not be parsed as
    # math text (a bad expression raises and no chart is written).
    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw_plots(directory, tables, histograms)


def _draw_plots(directory: Path, tables: dict[str, Table], histograms: dict[str, list[int]]) -> list[Path]:
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    if histograms:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS)]
        for model, counts in sorted(histograms.items()):
            ax.bar(edges, counts, width=1 / HISTOGRAM_BINS, align="edge", alpha=0.5, label=model)
        ax.set(title="Top-1 confidence per model version", xlabel="confidence", ylabel="images", xlim=(0, 1))
        ax.legend(fontsize="small")
        save(fig, "confidence_histograms.png")

    def bars(table: Table, series_of, value: str, title: str, ylabel: str, name: str) -> None:
        """Grouped bars per time bucket: readable with one bucket as with many (a date axis is not)."""
        if not table.rows:
            return
        series: dict[str, dict[str, float]] = {}
        for row in map(lambda r: dict(zip(table.columns, r, strict=True)), table.rows):
            bucket = dt.datetime.fromisoformat(row["bucket"]).strftime("%Y-%m-%d %H:%M")
            series.setdefault(series_of(row), {})[bucket] = float(row[value])
        buckets = sorted({bucket for points in series.values() for bucket in points})
        fig, ax = plt.subplots(figsize=(max(8.0, 0.4 * len(buckets) * len(series)), 4.5))
        width = 0.8 / len(series)
        for offset, (label, points) in enumerate(sorted(series.items())):
            ax.bar([i + offset * width for i in range(len(buckets))], [points.get(b, 0.0) for b in buckets],
                   width=width, align="edge", label=label)
        ax.set_xticks([i + 0.4 for i in range(len(buckets))], buckets, rotation=30, ha="right")
        ax.set(title=title, xlabel="time bucket (UTC)", ylabel=ylabel)
        ax.legend(fontsize="small")
        save(fig, name)

    bars(tables["throughput"], lambda r: f"{r['hostname']} {r['model']}", "images",
          "Images classified per time bucket", "images", "throughput.png")
    bars(tables["faces"], lambda r: r["camera_id"], "faces", "Faces per camera and time bucket", "faces",
          "faces_per_camera.png")
    bars(tables["visitors"], lambda r: r["camera_id"], "visitors", "Distinct visitors per camera and time bucket",
         "visitors", "visitors_per_camera.png")

    coverage = tables["coverage"]
    if coverage.rows:
        shares: dict[str, dict[str, float]] = {}
        for camera, outcome, _, share in coverage.rows:
            shares.setdefault(str(outcome), {})[str(camera)] = float(share)  # type: ignore[arg-type]
        cameras = sorted({str(row[0]) for row in coverage.rows})
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.5 * len(cameras)))
        left = [0.0] * len(cameras)
        for outcome, per_camera in sorted(shares.items(), key=lambda item: item[0] != "processed"):
            widths = [per_camera.get(camera, 0.0) for camera in cameras]
            ax.barh(cameras, widths, left=left, label=outcome)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set(title="Analysed share of frames per camera", xlabel="share of frames", xlim=(0, 1))
        ax.legend(fontsize="small")
        save(fig, "coverage_per_camera.png")
    return written


async def report_command(settings: Settings, args: argparse.Namespace) -> int:
    names = args.table or list(QUERIES)
    tables = await fetch_tables(settings, names, args.prefix, args.since, args.bucket)
    print({"text": format_text, "csv": format_csv, "json": format_json}[args.format](tables), end="")
    if args.plot is not None:
        # The charts need these tables whether or not they were asked for.
        by_name = {t.name: t for t in tables}
        missing = [n for n in ("throughput", "faces", "visitors", "coverage") if n not in by_name]
        by_name.update({t.name: t for t in await fetch_tables(settings, missing, args.prefix, args.since,
                                                               args.bucket)})
        histograms = await fetch_histograms(settings, args.prefix, args.since)
        written = await asyncio.to_thread(draw_plots, args.plot, by_name, histograms)
        # On stderr: stdout stays one CSV or JSON document.
        print("wrote " + ", ".join(str(p) for p in written) if written else "no data to plot", file=sys.stderr)
    return 0
