"""``curation report JOB --out report.html``: one self-contained HTML file about a job (issue 13 §2) — every
plot a matplotlib PNG and every thumbnail inlined as base64, so it opens offline and can be mailed.

Sections (``SECTIONS``, each an ``<section id=…>``): the funnel of every stage the job ran and of the slice;
a histogram of every numeric score column with the job's thresholds marked; category charts (top N);
per-bucket and per-source counts; scene durations; kept-vs-dropped thumbnail strips near each threshold;
item errors by class with examples. A section without data says so instead of disappearing, so a reader
(and the test) always finds all of them.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

SECTIONS = ("funnel", "scores", "categories", "buckets", "sources", "durations", "strips", "errors")

# (stage, param) → (view column, the side of the threshold that is kept): the job's resolved params in
# job_stages, as the views apply them
THRESHOLDS: dict[tuple[str, str], tuple[str, str]] = {
    ("resolution", "min_side"): ("short_side", ">="),
    ("complexity", "simple_threshold"): ("complexity", ">="),
    ("dynamics", "static_above"): ("ms_ssim_mean", "<"),
    ("dynamics", "dynamic_below"): ("ms_ssim_mean", ">"),
    ("qalign", "sft_min_quality"): ("qalign_quality", ">"),
    ("qalign", "sft_min_aesthetic"): ("qalign_aesthetic", ">"),
    ("video_qalign", "sft_min_quality"): ("qalign_quality", ">"),
    ("video_qalign", "sft_min_aesthetic"): ("qalign_aesthetic", ">"),
    ("watermark", "classifier_threshold"): ("watermark_classifier_p", "<"),
    ("watermark", "detector_threshold"): ("watermark_detector_conf", "<"),
    ("video_watermark", "classifier_threshold"): ("watermark_classifier_p", "<"),
    ("video_watermark", "detector_threshold"): ("watermark_detector_conf", "<"),
    ("phash", "max_distance"): ("near_duplicate_distance", ">"),
    ("video_hash", "max_distance"): ("near_duplicate_distance", ">"),
}
CATEGORY_COLUMNS = ("domain", "location", "style", "main_subject", "place_type", "object_labels", "format",
                    "mode", "container", "codec", "cluster_id")
NOT_SCORES = {"job_id", "asset_id", "exact_duplicate_of", "near_duplicate_of", "semantic_duplicate_of",
              "video_id", "start_frame", "end_frame", "start_s", "end_s", "cluster_id", "bucket",
              "thumbnail_width", "thumbnail_height", "exif_orientation", "rotation"}
TOP_N = 15
STRIP = 6  # thumbnails per side of a threshold


@dataclass(frozen=True)
class Threshold:
    stage: str
    param: str
    column: str
    value: float
    kept_when: str  # ">=", ">", "<": the side of ``value`` a kept asset is on

    def keeps(self, x: float) -> bool:
        return {">=": x >= self.value, ">": x > self.value, "<": x < self.value}[self.kept_when]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w: float = 6.0, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _barh(labels: list[str], values: list[float], title: str, xlabel: str = "assets") -> str:
    fig, ax = _figure(6.5, max(1.6, 0.32 * len(labels) + 0.9))
    ax.barh(range(len(labels)), values, color="#4C78A8")
    ax.set_yticks(range(len(labels)), [str(x)[:40] for x in labels])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    return _png(fig)


def _none(what: str) -> str:
    return f'<p class="none">{html.escape(what)}</p>'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def job_thresholds(conn, job_id: int, columns: set[str]) -> list[Threshold]:
    rows = conn.execute(text("SELECT stage, params FROM job_stages WHERE job_id = :j ORDER BY position"),
                        {"j": job_id}).all()
    out = []
    for r in rows:
        for param, value in (r.params or {}).items():
            spec = THRESHOLDS.get((r.stage, param))
            if spec and spec[0] in columns and _is_number(value):
                out.append(Threshold(r.stage, param, spec[0], float(value), spec[1]))
    return out


def _funnel(status, slice_funnel) -> str:
    stages = [s.stage for s in status.stages]
    fig, ax = _figure(7, max(2.0, 0.4 * len(stages) + 1))
    y = range(len(stages))
    scored = [s.scored for s in status.stages]
    errors = [s.errors for s in status.stages]
    pending = [s.queued + s.running for s in status.stages]
    ax.barh(y, scored, color="#54A24B", label="scored")
    ax.barh(y, errors, left=scored, color="#E45756", label="item errors")
    ax.barh(y, pending, left=[a + b for a, b in zip(scored, errors)], color="#BAB0AC", label="queued/running")
    ax.set_yticks(list(y), stages)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"every stage of job {status.job_id} ({status.n_assets} assets)")
    parts = [_png(fig), _table(["stage", "scored", "item errors", "queued", "running"],
                               [[s.stage, s.scored, s.errors, s.queued, s.running] for s in status.stages])]
    rows = [(k, v) for k, v in slice_funnel.rows() if v is not None]
    parts.append(_barh([k for k, _ in rows], [v for _, v in rows], "the slice's funnel (curated view)"))
    return "".join(parts)


def _scores(rows: list[dict], thresholds: list[Threshold]) -> str:
    if not rows:
        return _none("no rows in the curated view yet")
    columns = [c for c in rows[0] if c not in NOT_SCORES and not c.endswith("_version")
               and any(_is_number(r[c]) for r in rows)]
    if not columns:
        return _none("no numeric score column")
    parts = []
    for c in columns:
        values = [float(r[c]) for r in rows if _is_number(r[c])]
        fig, ax = _figure(4.6, 2.6)
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#4C78A8")
        marks = [t for t in thresholds if t.column == c]
        for t in marks:
            ax.axvline(t.value, color="#E45756", linestyle="--", label=f"{t.stage}.{t.param} = {t.value:g}")
        if marks:
            ax.legend(fontsize=7)
        ax.set_title(f"{c} (n={len(values)})", fontsize=10)
        parts.append(f'<figure data-column="{html.escape(c)}">{_png(fig)}</figure>')
    return '<div class="grid">' + "".join(parts) + "</div>"


def _categories(rows: list[dict]) -> str:
    parts = []
    for c in CATEGORY_COLUMNS:
        if not rows or c not in rows[0]:
            continue
        counts: Counter = Counter()
        for r in rows:
            v = r[c]
            if isinstance(v, list):
                counts.update(str(x) for x in v)
            elif v is not None:
                counts[str(v)] += 1
        if counts:
            top = counts.most_common(TOP_N)
            parts.append(_barh([k for k, _ in top], [n for _, n in top], f"{c}: top {min(TOP_N, len(counts))}"))
    return '<div class="grid">' + "".join(parts) + "</div>" if parts else _none("no category column has values")


def _counts(rows: list[dict], column: str, title: str, missing: str) -> str:
    if not rows:
        return _none("no rows in the curated view yet")
    counts = Counter(missing if r.get(column) is None else str(r[column]) for r in rows)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:TOP_N]
    return _barh([k for k, _ in top], [n for _, n in top], title) + _table([column, "assets"], [list(kv) for kv in top])


def _durations(rows: list[dict]) -> str:
    values = [float(r["duration_s"]) for r in rows if _is_number(r.get("duration_s"))]
    if not values:
        return _none("no scenes: this job has no scene durations (an image job, or no scene cut yet)")
    fig, ax = _figure()
    ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="#72B7B2")
    ax.set_xlabel("seconds")
    ax.set_title(f"scene durations (n={len(values)}, total {sum(values):.0f} s)")
    return _png(fig)


def _thumb(uri: str, caption: str) -> str:
    from curation import storage

    try:
        data = storage.read_bytes(uri)
    except storage.StorageError:
        return f'<figure class="thumb missing"><figcaption>{html.escape(caption)} (thumbnail missing)</figcaption></figure>'
    return (f'<figure class="thumb"><img alt="thumbnail" src="data:image/webp;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _strips(rows: list[dict], thresholds: list[Threshold]) -> str:
    with_thumbs = [r for r in rows if r.get("thumbnail_uri")]
    if not with_thumbs:
        return _none("no thumbnails: run the thumbnail (or video_thumbnail) stage in the job")
    parts = []
    for t in thresholds:
        scored = [r for r in with_thumbs if _is_number(r.get(t.column))]
        near = sorted(scored, key=lambda r: abs(float(r[t.column]) - t.value))
        kept = [r for r in near if t.keeps(float(r[t.column]))][:STRIP]
        dropped = [r for r in near if not t.keeps(float(r[t.column]))][:STRIP]
        if not kept and not dropped:
            continue
        strip = "".join(
            f'<div class="strip {side}"><h4>{side} ({t.column} {t.kept_when if side == "kept" else "not " + t.kept_when} '
            f"{t.value:g})</h4>" + "".join(_thumb(r["thumbnail_uri"], f"#{r['asset_id']} {t.column}={r[t.column]:.4g}")
                                           for r in items) + "</div>"
            for side, items in (("kept", kept), ("dropped", dropped)))
        parts.append(f"<h3>{html.escape(t.stage)}.{html.escape(t.param)} = {t.value:g}</h3>{strip}")
    uniq = [r for r in with_thumbs if "is_unique" in r]
    if uniq:  # the duplicate rule: kept copies and the copies it dropped
        kept = [r for r in uniq if r["is_unique"]][:STRIP]
        dropped = [r for r in uniq if not r["is_unique"]][:STRIP]
        parts.append("<h3>duplicates (is_unique)</h3>" + "".join(
            f'<div class="strip {side}"><h4>{side}</h4>' + "".join(_thumb(r["thumbnail_uri"], f"#{r['asset_id']}")
                                                                  for r in items) + "</div>"
            for side, items in (("kept", kept), ("dropped", dropped))))
    return "".join(parts) or _none("no thresholded column has scores")


def _errors(conn, job_id: int) -> str:
    rows = conn.execute(
        text("""
             SELECT e.stage, e.error_class, count(*) AS n,
                    (array_agg(e.message ORDER BY e.asset_id))[1:3] AS examples
             FROM item_errors e JOIN job_assets ja ON ja.asset_id = e.asset_id
             WHERE ja.job_id = :j GROUP BY e.stage, e.error_class ORDER BY count(*) DESC"""),
        {"j": job_id},
    ).all()
    if not rows:
        return _none("no item errors")
    chart = _barh([f"{r.stage}: {r.error_class}" for r in rows], [r.n for r in rows], "item errors by class")
    return chart + _table(["stage", "error class", "assets", "examples"],
                          [[r.stage, r.error_class, r.n, " | ".join(r.examples)] for r in rows])


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
section{border-top:2px solid #ddd;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}.plot{max-width:100%}
.strip{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start;padding:4px;margin:4px 0}
.strip h4{width:100%;margin:2px 0}.kept{background:#eef7ee}.dropped{background:#fbeeee}
.thumb{margin:0;font-size:.7em}.thumb img{max-height:128px;display:block}.none{color:#888}
"""


def render(engine: Engine, job_id: int, *, max_rows: int = 200_000) -> str:
    """The report of one job as an HTML document (``max_rows`` rows of the curated view are read)."""
    from curation import jobs, report

    job = jobs.load_job(engine, job_id)
    status = jobs.status(engine, job_id)
    view = job.spec.view
    with engine.connect() as conn:
        result = conn.execute(text(f"SELECT * FROM {view} WHERE job_id = :j ORDER BY asset_id LIMIT :n"),
                              {"j": job_id, "n": max_rows})
        rows = [dict(r._mapping) for r in result]
        thresholds = job_thresholds(conn, job_id, set(rows[0]) if rows else set())
        slice_funnel = report.funnel(conn, job_id, job.spec)
        errors = _errors(conn, job_id)
    bodies = {
        "funnel": ("Funnel", _funnel(status, slice_funnel)),
        "scores": ("Score histograms", _scores(rows, thresholds)),
        "categories": ("Categories", _categories(rows)),
        "buckets": ("Buckets", _counts(rows, "bucket", "assets per bucket (short side)", "below 256")),
        "sources": ("Sources", _counts(rows, "source", "assets per source", "(none)")),
        "durations": ("Scene durations", _durations(rows)),
        "strips": ("Kept vs dropped near each threshold", _strips(rows, thresholds)),
        "errors": ("Item errors", errors),
    }
    title = f"job {job.id}: {html.escape(job.name)}"
    head = (f"<h1>{title}</h1><p>{job.spec.modality} job, status {job.status}, {status.n_assets} assets, "
            f"{status.dead_tasks} dead-lettered tasks; view {view}; created {job.created_at:%Y-%m-%d %H:%M:%S}"
            + (f" (first {max_rows} rows)" if len(rows) >= max_rows else "") + "</p>")
    sections = "".join(f'<section id="{key}"><h2>{name}</h2>{body}</section>' for key, (name, body) in bodies.items())
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>'
            f"<body>{head}{sections}</body></html>")
