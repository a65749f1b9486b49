-- curated_scenes as of migration 0021, rendered by workers/views.py from the stage registry:
-- one row per (job, asset); each stage's columns from the results of the configurations the job
-- used (job_configs), flags from the job's resolved params (job_stages).
CREATE VIEW curated_scenes AS
SELECT
    ja.job_id,
    a.asset_id,
    a.uri,
    s.name AS source,
    a.parent_id AS video_id,
    a.start_frame,
    a.end_frame,
    a.start_s,
    a.end_s,
    (a.end_s - a.start_s) AS duration_s,
    ex.duplicate_of AS exact_duplicate_of,
    nd.duplicate_of AS near_duplicate_of,
    nd.distance AS near_duplicate_distance,
    (h.asset_id IS NOT NULL AND ex.duplicate_of IS NULL AND nd.duplicate_of IS NULL) AS is_unique,
    CASE WHEN least(p.width, p.height) >= 1024 THEN 1024 WHEN least(p.width, p.height) >= 512 THEN 512 WHEN least(p.width, p.height) >= 256 THEN 256 END AS bucket,
    md.caption AS source_caption,
    md.metadata,
    ac.cluster_id,
    sd.duplicate_of AS semantic_duplicate_of,
    p.container,
    p.codec,
    p.width,
    p.height,
    p.fps,
    p.variable_frame_rate,
    p.rotation,
    p.has_audio,
    p.bytes AS video_bytes,
    encode(p.sha256, 'hex') AS video_sha256,
    least(p.width, p.height) AS short_side,
    greatest(p.width, p.height) AS long_side,
    round((p.width::numeric / nullif(p.height, 0)), 4)::double precision AS aspect_ratio,
    p.stage_version AS video_probe_version,
    sp.stage_version AS scenes_version,
    h.vhash,
    h.stage_version AS video_hash_version,
    d.ms_ssim_mean,
    d.ms_ssim_min,
    d.ms_ssim_max,
    d.pairs AS ms_ssim_pairs,
    (d.ms_ssim_mean >= (td.params->>'static_above')::float8) AS too_static,
    (d.ms_ssim_mean <= (td.params->>'dynamic_below')::float8) AS too_dynamic,
    d.stage_version AS dynamics_version,
    tx.text_boxes_mean,
    tx.text_area_mean,
    tx.stage_version AS video_text_version,
    ob.labels AS object_labels,
    ob.n_detections AS n_objects,
    ob.stage_version AS video_objects_version,
    mo.camera_motion,
    mo.object_motion,
    mo.light_dynamics,
    mo.stage_version AS motion_version,
    wm.classifier_p AS watermark_classifier_p,
    wm.detector_conf AS watermark_detector_conf,
    (wm.classifier_p >= (tw.params->>'classifier_threshold')::float8 OR coalesce(wm.detector_conf >= (tw.params->>'detector_threshold')::float8, false)) AS watermark,
    wm.stage_version AS video_watermark_version,
    cl.location,
    cl.location_p,
    cl.style,
    cl.style_p,
    cl.main_subject,
    cl.main_subject_p,
    cl.place_type,
    cl.place_type_p,
    cl.stage_version AS video_clip_version,
    qa.qalign_quality,
    qa.qalign_aesthetic,
    (qa.qalign_quality > (tqa.params->>'sft_min_quality')::float8 AND qa.qalign_aesthetic > (tqa.params->>'sft_min_aesthetic')::float8) AS qalign_sft_candidate,
    qa.stage_version AS video_qalign_version,
    dv.dover_technical,
    dv.dover_aesthetic,
    dv.dover_overall,
    dv.stage_version AS dover_version,
    cp.caption_en,
    cp.caption_ru,
    cp.stage_version AS video_caption_version,
    dm.domain,
    dm.domain_unparsed,
    dm.stage_version AS video_domain_version,
    tn.thumbnail_uri,
    tn.thumbnail_width,
    tn.thumbnail_height,
    tn.stage_version AS video_thumbnail_version
FROM job_assets ja
JOIN assets a ON a.asset_id = ja.asset_id
JOIN sources s ON s.source_id = a.source_id
LEFT JOIN asset_metadata md ON md.asset_id = a.asset_id
LEFT JOIN LATERAL (SELECT k.clustering_id FROM clusterings k WHERE k.job_id = ja.job_id
                   AND k.finished_at IS NOT NULL ORDER BY k.clustering_id DESC LIMIT 1) kc ON true
LEFT JOIN asset_clusters ac ON ac.clustering_id = kc.clustering_id AND ac.asset_id = a.asset_id
LEFT JOIN job_stages th ON th.job_id = ja.job_id AND th.stage = 'video_hash'
LEFT JOIN job_stages td ON td.job_id = ja.job_id AND td.stage = 'dynamics'
LEFT JOIN job_stages tw ON tw.job_id = ja.job_id AND tw.stage = 'video_watermark'
LEFT JOIN job_stages tqa ON tqa.job_id = ja.job_id AND tqa.stage = 'video_qalign'
LEFT JOIN LATERAL (SELECT * FROM video_probe_results x WHERE x.asset_id = a.parent_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT * FROM scene_split_results x WHERE x.asset_id = a.parent_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) sp ON true
LEFT JOIN LATERAL (SELECT * FROM video_hash_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) h ON true
LEFT JOIN LATERAL (SELECT * FROM dynamics_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT * FROM video_text_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) tx ON true
LEFT JOIN LATERAL (SELECT * FROM object_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) ob ON true
LEFT JOIN LATERAL (SELECT * FROM motion_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) mo ON true
LEFT JOIN LATERAL (SELECT * FROM watermark_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) wm ON true
LEFT JOIN LATERAL (SELECT * FROM clip_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cl ON true
LEFT JOIN LATERAL (SELECT * FROM qalign_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) qa ON true
LEFT JOIN LATERAL (SELECT * FROM dover_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) dv ON true
LEFT JOIN LATERAL (SELECT * FROM caption_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) cp ON true
LEFT JOIN LATERAL (SELECT * FROM domain_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) dm ON true
LEFT JOIN LATERAL (SELECT * FROM thumbnail_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc WHERE jc.job_id = ja.job_id)
                   ORDER BY x.created_at DESC LIMIT 1) tn ON true
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
                   LIMIT 1) sd ON true
WHERE a.kind = 'scene';
