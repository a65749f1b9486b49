"""The curated views, rendered from the stage registry: each built-in stage's ``view_columns``
(``workers.columns.ViewColumns``) in registry order, inside a fixed skeleton per view (the job's rows,
the asset, the duplicate rules, the bucket).

A migration that changes a view applies a plain SQL file rendered by this module and committed with it
(``db/migrations/views/<view>.<revision>.sql``, written by ``python -m workers.views <revision>``);
``tests/test_views.py`` checks that the rendering equals the newest file, so a stage's view columns
cannot change without a migration. Adding a scoring stage to a view = its ``view_columns``, a migration
with its table's DDL that applies the newly rendered file.

Rules of every view: one row per (job, asset) (``job_assets``); a stage's row is the newest result of
the configurations that job used (``job_configs``); flags compare raw scores with the job's resolved
params (``job_stages``), read when the slice is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from workers.columns import ViewColumns
from workers.phash import CROP_BITS, CROP_NEAR_BITS, FILL_MARGIN, GREYSCALE_BELOW, QUALITY_TIES
from workers.stage import builtin_stage_names, get_stage

VIEWS_DIR = Path(__file__).resolve().parent.parent / "db" / "migrations" / "views"
VIEW_NAMES = ("curated_images", "curated_scenes")

# Not stage results: the source list's caption and metadata (asset_metadata) and the job's newest
# finished clustering (``curation cluster``, migration 0015), in both views after the bucket.
_TEXT_HALF_HEAD = (
    "md.caption AS source_caption",
    "md.metadata",
    "ac.cluster_id",
    "sd.duplicate_of AS semantic_duplicate_of",
)
_TEXT_HALF_JOINS = (
    "LEFT JOIN asset_metadata md ON md.asset_id = a.asset_id",
    "LEFT JOIN LATERAL (SELECT k.clustering_id FROM clusterings k WHERE k.job_id = ja.job_id\n"
    "                   AND k.finished_at IS NOT NULL ORDER BY k.clustering_id DESC LIMIT 1) kc ON true",
    "LEFT JOIN asset_clusters ac ON ac.clustering_id = kc.clustering_id AND ac.asset_id = a.asset_id",
)

_SKELETON = {
    "curated_images": {
        "kind": "image",
        "head": (
            "ja.job_id",
            "a.asset_id",
            "a.uri",
            "s.name AS source",
            "(p.asset_id IS NOT NULL) AS decoded",
            "ex.duplicate_of AS exact_duplicate_of",
            "nd.duplicate_of AS near_duplicate_of",
            "nd.distance AS near_duplicate_distance",
            "(p.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique",
            "CASE WHEN r.short_side >= 1024 THEN 1024 WHEN r.short_side >= 512 THEN 512 "
            "WHEN r.short_side >= 256 THEN 256 END AS bucket",
            *_TEXT_HALF_HEAD,
        ),
        "needs": ("p", "r", "h", "th", "q", "tq", "qa"),
        "duplicates": """\
-- exact duplicate: the same bytes were seen first under a lower asset id (any job, any config)
LEFT JOIN LATERAL (SELECT min(o.asset_id) AS duplicate_of FROM probe_results o
                   WHERE o.sha256 = p.sha256 AND o.asset_id < a.asset_id) ex ON true
-- near duplicate: a neighbour within the job's phash max_distance (by the full, mirrored or centre hash)
-- ranks higher under the job's keep_rule (workers/phash.py): its criteria in order, each the sign of
-- "the neighbour is better" (colour over greyscale; framing: not a crop of the other by the centre/full
-- hash asymmetry, else less black border fill; quality: Q-Align, else TOPIQ technical, else BRISQUE, when
-- both have it; more pixels; more bytes), then the lower asset id; the best-ranked asset of a group is kept
-- (near_duplicate_of: of the neighbours that rank higher, a full-hash match first, then the nearest)
LEFT JOIN LATERAL (SELECT n.other_id AS duplicate_of, n.distance FROM near_duplicates n
                   JOIN LATERAL (SELECT * FROM probe_results y WHERE y.asset_id = n.other_id
                                 ORDER BY y.created_at DESC LIMIT 1) op ON true
                   LEFT JOIN phash_results oh ON oh.asset_id = n.other_id AND oh.config_id = n.config_id
                   LEFT JOIN LATERAL (SELECT
                       (SELECT x.qalign_quality FROM qalign_results x WHERE x.asset_id = n.other_id AND x.config_id IN
                        (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                        ORDER BY x.created_at DESC LIMIT 1) AS qalign_quality,
                       (SELECT x.topiq_technical FROM topiq_results x WHERE x.asset_id = n.other_id AND x.config_id IN
                        (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                        ORDER BY x.created_at DESC LIMIT 1) AS topiq_technical,
                       (SELECT x.brisque FROM quality_results x WHERE x.asset_id = n.other_id AND x.config_id IN
                        (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                        ORDER BY x.created_at DESC LIMIT 1) AS brisque) oq ON true
                   CROSS JOIN LATERAL (SELECT
                       CASE WHEN oh.border_fill IS NULL OR h.border_fill IS NULL THEN 0
                            WHEN oh.border_fill + FILL_MARGIN < h.border_fill THEN 1
                            WHEN h.border_fill + FILL_MARGIN < oh.border_fill THEN -1 ELSE 0 END AS fill,
                       bit_count(oh.phash_center # h.phash) AS inner_me, bit_count(oh.phash # h.phash_center) AS inner_other,
                       bit_count(h.phash_center # oh.phash) AS me_inner, bit_count(h.phash # oh.phash_center) AS other_inner
                       ) fr
                   CROSS JOIN LATERAL (SELECT ARRAY(
                       SELECT CASE k.c
                           WHEN 'colour' THEN (coalesce(oh.colourfulness, 255) >= GREY)::int
                                              - (coalesce(h.colourfulness, 255) >= GREY)::int
                           WHEN 'framing' THEN CASE
                               WHEN oh.phash_center IS NULL OR h.phash_center IS NULL THEN fr.fill
                               WHEN least(fr.inner_me, fr.inner_other) > CROP_NEAR_BITS THEN fr.fill
                               WHEN fr.inner_me + CROP_BITS <= fr.inner_other THEN 1  -- this one is a crop of the other
                               WHEN fr.me_inner + CROP_BITS <= fr.other_inner THEN -1
                               ELSE fr.fill END
                           WHEN 'quality' THEN CASE
                               WHEN qa.qalign_quality IS NOT NULL AND oq.qalign_quality IS NOT NULL THEN
                                   CASE WHEN abs(oq.qalign_quality - qa.qalign_quality) < QALIGN_TIE THEN 0
                                        ELSE sign(oq.qalign_quality - qa.qalign_quality)::int END
                               WHEN tq.topiq_technical IS NOT NULL AND oq.topiq_technical IS NOT NULL THEN
                                   CASE WHEN abs(oq.topiq_technical - tq.topiq_technical) < TOPIQ_TIE THEN 0
                                        ELSE sign(oq.topiq_technical - tq.topiq_technical)::int END
                               WHEN q.brisque IS NOT NULL AND oq.brisque IS NOT NULL THEN
                                   CASE WHEN abs(oq.brisque - q.brisque) < BRISQUE_TIE THEN 0
                                        ELSE sign(q.brisque - oq.brisque)::int END
                               ELSE 0 END
                           WHEN 'pixels' THEN sign((op.width::bigint * op.height - p.width::bigint * p.height)::numeric)::int
                           WHEN 'bytes' THEN sign((op.bytes - p.bytes)::numeric)::int
                           ELSE 0 END
                       FROM unnest(regexp_split_to_array(coalesce(th.params->>'keep_rule', 'colour,pixels,bytes'),
                                                         '[,_ ]+')) WITH ORDINALITY k(c, i) ORDER BY k.i)
                       || sign((a.asset_id - op.asset_id)::numeric)::int AS better) cmp
                   WHERE n.asset_id = a.asset_id AND n.config_id = h.config_id
                     AND n.distance <= (th.params->>'max_distance')::int
                     AND cmp.better > array_fill(0, ARRAY[cardinality(cmp.better)])
                   ORDER BY n.kind <> 'full', n.distance, cmp.better DESC, op.asset_id
                   LIMIT 1) nd ON true
-- semantic duplicate: a pair of the job's newest clustering ranks higher by the same rule
LEFT JOIN LATERAL (SELECT dup.other_id AS duplicate_of FROM semantic_duplicates dup
                   JOIN LATERAL (SELECT * FROM probe_results y WHERE y.asset_id = dup.other_id
                                 ORDER BY y.created_at DESC LIMIT 1) op ON true
                   WHERE dup.clustering_id = kc.clustering_id AND dup.asset_id = a.asset_id
                     AND (op.width::bigint * op.height, op.bytes, -op.asset_id)
                       > (p.width::bigint * p.height, p.bytes, -a.asset_id)
                   ORDER BY op.width::bigint * op.height DESC, op.bytes DESC, op.asset_id
                   LIMIT 1) sd ON true""",
    },
    "curated_scenes": {
        "kind": "scene",
        "head": (
            "ja.job_id",
            "a.asset_id",
            "a.uri",
            "s.name AS source",
            "a.parent_id AS video_id",
            "a.start_frame",
            "a.end_frame",
            "a.start_s",
            "a.end_s",
            "(a.end_s - a.start_s) AS duration_s",
            "ex.duplicate_of AS exact_duplicate_of",
            "nd.duplicate_of AS near_duplicate_of",
            "nd.distance AS near_duplicate_distance",
            "(h.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique",
            "CASE WHEN least(p.width, p.height) >= 1024 THEN 1024 WHEN least(p.width, p.height) >= 512 THEN 512 "
            "WHEN least(p.width, p.height) >= 256 THEN 256 END AS bucket",
            *_TEXT_HALF_HEAD,
        ),
        "needs": ("p", "h", "th"),
        "duplicates": """\
-- exact duplicate: the same frames of a byte-identical video seen first under a lower asset id
LEFT JOIN LATERAL (SELECT min(o.asset_id) AS duplicate_of FROM assets o
                   JOIN video_probe_results op ON op.asset_id = o.parent_id
                   WHERE op.sha256 = p.sha256 AND o.start_frame = a.start_frame AND o.end_frame = a.end_frame
                     AND o.asset_id < a.asset_id) ex ON true
-- near duplicate: a scene within the job's video_hash max_distance ranks higher
-- (longer, then more pixels, then the lower asset id); the best-ranked scene of a group is kept
LEFT JOIN LATERAL (SELECT n.other_id AS duplicate_of, n.distance FROM near_duplicates n
                   JOIN assets o ON o.asset_id = n.other_id
                   JOIN LATERAL (SELECT * FROM video_probe_results y WHERE y.asset_id = o.parent_id
                                 ORDER BY y.created_at DESC LIMIT 1) op ON true
                   WHERE n.asset_id = a.asset_id AND n.config_id = h.config_id
                     AND n.distance <= (th.params->>'max_distance')::int
                     AND (round((o.end_s - o.start_s)::numeric, 2), op.width::bigint * op.height, -o.asset_id)
                       > (round((a.end_s - a.start_s)::numeric, 2), p.width::bigint * p.height, -a.asset_id)
                   ORDER BY round((o.end_s - o.start_s)::numeric, 2) DESC, op.width::bigint * op.height DESC,
                            o.asset_id
                   LIMIT 1) nd ON true
-- semantic duplicate: a pair of the job's newest clustering ranks higher (longer, then the lower asset id)
LEFT JOIN LATERAL (SELECT dup.other_id AS duplicate_of FROM semantic_duplicates dup
                   JOIN assets o ON o.asset_id = dup.other_id
                   WHERE dup.clustering_id = kc.clustering_id AND dup.asset_id = a.asset_id
                     AND (round((o.end_s - o.start_s)::numeric, 2), -o.asset_id)
                       > (round((a.end_s - a.start_s)::numeric, 2), -a.asset_id)
                   ORDER BY round((o.end_s - o.start_s)::numeric, 2) DESC, o.asset_id
                   LIMIT 1) sd ON true""",
    },
}


_SKELETON_ALIASES = {"ja", "a", "s", "md", "kc", "ac", "sd", "ex", "nd"}  # the outer query's own


class ViewError(ValueError):
    """The stage declarations do not make a valid view (a missing alias, two stages on one alias)."""


def declarations(view: str) -> list[tuple[str, str, ViewColumns]]:
    """(stage name, result table, declaration) of every built-in stage shown in ``view``, registry order."""
    out = []
    for name in builtin_stage_names():
        cls = get_stage(name)
        for decl in cls.view_columns:
            if decl.view == view:
                out.append((cls.name, cls.result_table, decl))
    return out


def render_view(view: str, revision: str) -> str:
    """The ``CREATE VIEW`` statement of ``view`` as the stage registry declares it now."""
    if view not in _SKELETON:
        raise ViewError(f"unknown view {view!r}; one of {', '.join(_SKELETON)}")
    skeleton = _SKELETON[view]
    decls = declarations(view)
    aliases = [d.alias for _, _, d in decls] + [d.thresholds for _, _, d in decls if d.thresholds]
    taken = [a for a in aliases if a in _SKELETON_ALIASES]
    if taken:
        raise ViewError(f"{view}: the aliases {taken} are the skeleton's; a stage must use another")
    if len(set(aliases)) != len(aliases):
        raise ViewError(f"{view}: two stages use the same alias ({sorted(a for a in aliases if aliases.count(a) > 1)})")
    missing = [a for a in skeleton["needs"] if a not in aliases]
    if missing:
        raise ViewError(f"{view}: the skeleton needs the aliases {missing}, which no stage declares")
    select = list(skeleton["head"])
    duplicates = skeleton["duplicates"]
    for token, value in (("GREY", GREYSCALE_BELOW), ("CROP_NEAR_BITS", CROP_NEAR_BITS), ("CROP_BITS", CROP_BITS),
                         ("FILL_MARGIN", FILL_MARGIN), ("QALIGN_TIE", QUALITY_TIES["qalign_quality"]),
                         ("TOPIQ_TIE", QUALITY_TIES["topiq_technical"]), ("BRISQUE_TIE", QUALITY_TIES["brisque"])):
        duplicates = duplicates.replace(token, repr(value))
    for name, _, decl in decls:
        select += list(decl.columns) + [f"{decl.alias}.stage_version AS {name}_version"]
    joins = []
    for name, _, decl in decls:
        if decl.thresholds:
            joins.append(f"LEFT JOIN job_stages {decl.thresholds} ON {decl.thresholds}.job_id = ja.job_id "
                         f"AND {decl.thresholds}.stage = '{name}'")
    for name, table, decl in decls:
        joins.append(f"LEFT JOIN LATERAL (SELECT * FROM {table} x WHERE x.asset_id = {decl.of}\n"
                     f"                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc "
                     f"WHERE jc.job_id = ja.job_id)\n"
                     f"                   ORDER BY x.created_at DESC LIMIT 1) {decl.alias} ON true")
    lines = [
        f"-- {view} as of migration {revision}, rendered by workers/views.py from the stage registry:",
        "-- one row per (job, asset); each stage's columns from the results of the configurations the job",
        "-- used (job_configs), flags from the job's resolved params (job_stages).",
        f"CREATE VIEW {view} AS",
        "SELECT",
        ",\n".join(f"    {item}" for item in select),
        "FROM job_assets ja",
        "JOIN assets a ON a.asset_id = ja.asset_id",
        "JOIN sources s ON s.source_id = a.source_id",
        *_TEXT_HALF_JOINS,
        *joins,
        duplicates,
        f"WHERE a.kind = '{skeleton['kind']}';",
    ]
    return "\n".join(lines) + "\n"


def snapshot_path(view: str, revision: str) -> Path:
    return VIEWS_DIR / f"{view}.{revision}.sql"


def newest_snapshot(view: str) -> tuple[str, Path]:
    """(revision, file) of the newest committed rendering of ``view``."""
    files = sorted(VIEWS_DIR.glob(f"{view}.*.sql"))
    if not files:
        raise ViewError(f"no committed snapshot of {view} in {VIEWS_DIR}")
    return files[-1].name.split(".")[1], files[-1]


def main(argv: list[str]) -> int:
    """``python -m workers.views REVISION``: write every view's rendering for a new migration."""
    if len(argv) != 1:
        print("usage: python -m workers.views REVISION   (e.g. 0014)", file=sys.stderr)
        return 2
    for view in VIEW_NAMES:
        path = snapshot_path(view, argv[0])
        path.write_text(render_view(view, argv[0]))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
