-- curated_images as of migration 0021, rendered by workers/views.py from the stage registry:
-- one row per (job, asset); each stage's columns from the results of the configurations the job
-- used (job_configs), flags from the job's resolved params (job_stages).
CREATE VIEW curated_images AS
SELECT
    ja.job_id,
    a.asset_id,
    a.uri,
    s.name AS source,
    (p.asset_id IS NOT NULL) AS decoded,
    ex.duplicate_of AS exact_duplicate_of,
    nd.duplicate_of AS near_duplicate_of,
    nd.distance AS near_duplicate_distance,
    (p.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique,
    CASE WHEN r.short_side >= 1024 THEN 1024 WHEN r.short_side >= 512 THEN 512 WHEN r.short_side >= 256 THEN 256 END AS bucket,
    md.caption AS source_caption,
    md.metadata,
    ac.cluster_id,
    sd.duplicate_of AS semantic_duplicate_of,
    p.format,
    p.width,
    p.height,
    p.mode,
    p.bytes,
    encode(p.sha256, 'hex') AS sha256,
    p.decode_ms,
    p.orientation AS exif_orientation,
    p.stage_version AS probe_version,
    r.short_side,
    r.long_side,
    r.aspect_ratio,
    r.stage_version AS resolution_version,
    h.phash,
    h.colourfulness,
    h.border_fill,
    h.stage_version AS phash_version,
    e.edge_density,
    e.edge_mean,
    e.stage_version AS edges_version,
    q.brisque,
    q.stage_version AS quality_version,
    tx.text_boxes,
    tx.text_area,
    tx.stage_version AS text_version,
    cl.location,
    cl.location_p,
    cl.style,
    cl.style_p,
    cl.main_subject,
    cl.main_subject_p,
    cl.place_type,
    cl.place_type_p,
    cl.stage_version AS clip_version,
    ob.labels AS object_labels,
    ob.n_detections AS n_objects,
    ob.stage_version AS objects_version,
    wm.classifier_p AS watermark_classifier_p,
    wm.detector_conf AS watermark_detector_conf,
    (wm.classifier_p >= (tw.params->>'classifier_threshold')::float8 OR coalesce(wm.detector_conf >= (tw.params->>'detector_threshold')::float8, false)) AS watermark,
    wm.stage_version AS watermark_version,
    tq.topiq_technical,
    tq.topiq_aesthetic,
    tq.stage_version AS topiq_version,
    qa.qalign_quality,
    qa.qalign_aesthetic,
    (qa.qalign_quality > (tqa.params->>'sft_min_quality')::float8 AND qa.qalign_aesthetic > (tqa.params->>'sft_min_aesthetic')::float8) AS qalign_sft_candidate,
    qa.stage_version AS qalign_version,
    cx.complexity,
    cx.mask_count,
    cx.mask_coverage,
    (cx.complexity < (tcx.params->>'simple_threshold')::float8) AS too_simple,
    cx.stage_version AS complexity_version,
    cp.caption_en,
    cp.caption_ru,
    cp.stage_version AS caption_version,
    dm.domain,
    dm.domain_unparsed,
    dm.stage_version AS domain_version,
    CASE WHEN cts.source_caption_sha256 = encode(sha256(convert_to(cp.caption_en, 'UTF8')), 'hex') THEN cts.clip_text_score END AS clip_text_score,
    cts.stage_version AS clip_text_score_version,
    tn.thumbnail_uri,
    tn.thumbnail_width,
    tn.thumbnail_height,
    tn.stage_version AS thumbnail_version,
    fc.face_count,
    fc.largest_face_fraction,
    fc.stage_version AS faces_version
FROM job_assets ja
JOIN assets a ON a.asset_id = ja.asset_id
JOIN sources s ON s.source_id = a.source_id
LEFT JOIN asset_metadata md ON md.asset_id = a.asset_id
LEFT JOIN LATERAL (SELECT k.clustering_id FROM clusterings k WHERE k.job_id = ja.job_id
                   AND k.finished_at IS NOT NULL ORDER BY k.clustering_id DESC LIMIT 1) kc ON true
LEFT JOIN asset_clusters ac ON ac.clustering_id = kc.clustering_id AND ac.asset_id = a.asset_id
LEFT JOIN job_stages th ON th.job_id = ja.job_id AND th.stage = 'phash'
LEFT JOIN job_stages tw ON tw.job_id = ja.job_id AND tw.stage = 'watermark'
LEFT JOIN job_stages tqa ON tqa.job_id = ja.job_id AND tqa.stage = 'qalign'
LEFT JOIN job_stages tcx ON tcx.job_id = ja.job_id AND tcx.stage = 'complexity'
LEFT JOIN LATERAL (SELECT * FROM probe_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT * FROM resolution_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT * FROM phash_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) h ON true
LEFT JOIN LATERAL (SELECT * FROM edge_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) e ON true
LEFT JOIN LATERAL (SELECT * FROM quality_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) q ON true
LEFT JOIN LATERAL (SELECT * FROM text_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) tx ON true
LEFT JOIN LATERAL (SELECT * FROM clip_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cl ON true
LEFT JOIN LATERAL (SELECT * FROM object_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) ob ON true
LEFT JOIN LATERAL (SELECT * FROM watermark_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) wm ON true
LEFT JOIN LATERAL (SELECT * FROM topiq_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) tq ON true
LEFT JOIN LATERAL (SELECT * FROM qalign_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) qa ON true
LEFT JOIN LATERAL (SELECT * FROM complexity_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cx ON true
LEFT JOIN LATERAL (SELECT * FROM caption_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cp ON true
LEFT JOIN LATERAL (SELECT * FROM domain_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) dm ON true
LEFT JOIN LATERAL (SELECT * FROM clip_text_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cts ON true
LEFT JOIN LATERAL (SELECT * FROM thumbnail_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) tn ON true
LEFT JOIN LATERAL (SELECT * FROM face_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) fc ON true
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
                            WHEN oh.border_fill + 0.02 < h.border_fill THEN 1
                            WHEN h.border_fill + 0.02 < oh.border_fill THEN -1 ELSE 0 END AS fill,
                       bit_count(oh.phash_center # h.phash) AS inner_me, bit_count(oh.phash # h.phash_center) AS inner_other,
                       bit_count(h.phash_center # oh.phash) AS me_inner, bit_count(h.phash # oh.phash_center) AS other_inner
                       ) fr
                   CROSS JOIN LATERAL (SELECT ARRAY(
                       SELECT CASE k.c
                           WHEN 'colour' THEN (coalesce(oh.colourfulness, 255) >= 4.0)::int
                                              - (coalesce(h.colourfulness, 255) >= 4.0)::int
                           WHEN 'framing' THEN CASE
                               WHEN oh.phash_center IS NULL OR h.phash_center IS NULL THEN fr.fill
                               WHEN least(fr.inner_me, fr.inner_other) > 16 THEN fr.fill
                               WHEN fr.inner_me + 8 <= fr.inner_other THEN 1  -- this one is a crop of the other
                               WHEN fr.me_inner + 8 <= fr.other_inner THEN -1
                               ELSE fr.fill END
                           WHEN 'quality' THEN CASE
                               WHEN qa.qalign_quality IS NOT NULL AND oq.qalign_quality IS NOT NULL THEN
                                   CASE WHEN abs(oq.qalign_quality - qa.qalign_quality) < 0.1 THEN 0
                                        ELSE sign(oq.qalign_quality - qa.qalign_quality)::int END
                               WHEN tq.topiq_technical IS NOT NULL AND oq.topiq_technical IS NOT NULL THEN
                                   CASE WHEN abs(oq.topiq_technical - tq.topiq_technical) < 0.02 THEN 0
                                        ELSE sign(oq.topiq_technical - tq.topiq_technical)::int END
                               WHEN q.brisque IS NOT NULL AND oq.brisque IS NOT NULL THEN
                                   CASE WHEN abs(oq.brisque - q.brisque) < 2.0 THEN 0
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
                   LIMIT 1) sd ON true
WHERE a.kind = 'image';
