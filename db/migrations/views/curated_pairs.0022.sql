-- curated_pairs as of migration 0022 (docs/pairs.md; 0019 + the pair_instruction stage's instruction): one row per (pair-mining job, pair); every raw score
-- (candidate scores from image_pairs, geometry from pair_verify_results under the job's configurations,
-- the target's Q-Align in the image job); Table 1 of the report applied from the job's resolved params
-- (job_stages of pair_candidates and pair_verify), so a threshold re-tunes without recomputing anything.
CREATE VIEW curated_pairs AS
SELECT
    ja.job_id,
    a.asset_id AS pair_id,
    (j.spec->'pairs'->>'image_job')::bigint AS image_job_id,
    ip.source_asset_id,
    sa.uri AS source_uri,
    ip.target_asset_id,
    ta.uri AS target_uri,
    ip.found_by,
    ip.clip_sim,
    ip.dino_sim,
    ip.clip_thr,
    ip.cluster_id,
    ip.face_sim,
    pv.matcher,
    pv.n_matches,
    pv.inliers,
    pv.n_groups,
    pv.group_inliers,
    pv.fundamental_inliers,
    pv.scale,
    pv.rotation_deg,
    pv.tx,
    pv.ty,
    pv.overlap_source,
    pv.overlap_target,
    pv.dino_aligned_sim,
    (greatest(pv.overlap_source, pv.overlap_target) >= (tv.params->>'crop_containment')::float8
     AND least(pv.overlap_source, pv.overlap_target) < (tv.params->>'crop_overlap')::float8) AS is_simple_crop,
    pv.stage_version AS pair_verify_version,
    pi.instruction,
    pi.instruction_raw,
    pi.model AS instruction_model,
    pi.prompt_version AS instruction_prompt_version,
    tq.qalign_quality AS target_qalign_quality,
    tq.qalign_aesthetic AS target_qalign_aesthetic,
    rule.admitted_by,
    rule.excluded_by,
    (rule.admitted_by IS NOT NULL AND rule.excluded_by IS NULL) AS is_kept,
    CASE WHEN tq.asset_id IS NOT NULL
         THEN rule.admitted_by IS NOT NULL AND rule.excluded_by IS NULL
              AND tq.qalign_quality > t.sft_min_quality AND tq.qalign_aesthetic > t.sft_min_aesthetic END AS is_sft
FROM job_assets ja
JOIN assets a ON a.asset_id = ja.asset_id
JOIN jobs j ON j.job_id = ja.job_id
JOIN job_stages tc ON tc.job_id = ja.job_id AND tc.stage = 'pair_candidates'
LEFT JOIN job_stages tv ON tv.job_id = ja.job_id AND tv.stage = 'pair_verify'
JOIN LATERAL (SELECT * FROM image_pairs x WHERE x.asset_id = a.asset_id AND x.job_id = ja.job_id
              ORDER BY x.created_at DESC LIMIT 1) ip ON true
JOIN assets sa ON sa.asset_id = ip.source_asset_id
JOIN assets ta ON ta.asset_id = ip.target_asset_id
LEFT JOIN LATERAL (SELECT * FROM pair_verify_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc
                                       WHERE jc.job_id = ja.job_id AND jc.stage = 'pair_verify')
                   ORDER BY x.created_at DESC LIMIT 1) pv ON true
LEFT JOIN LATERAL (SELECT * FROM pair_instruction_results x WHERE x.asset_id = a.asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc
                                       WHERE jc.job_id = ja.job_id AND jc.stage = 'pair_instruction')
                   ORDER BY x.created_at DESC LIMIT 1) pi ON true
LEFT JOIN LATERAL (SELECT * FROM qalign_results x WHERE x.asset_id = ip.target_asset_id
                   AND x.config_id IN (SELECT jc.config_id FROM job_configs jc
                                       WHERE jc.job_id = (j.spec->'pairs'->>'image_job')::bigint
                                         AND jc.stage = 'qalign')
                   ORDER BY x.created_at DESC LIMIT 1) tq ON true
-- Table 1's thresholds, as the job resolved them (defaults included) or as `curation pairs rules` re-tuned them
CROSS JOIN LATERAL (SELECT (tc.params->>'dino_min_sim')::float8 AS dino_min_sim,
                           (tc.params->>'dino_min_inliers')::float8 AS dino_min_inliers,
                           (tc.params->>'clip_min_sim')::float8 AS clip_min_sim,
                           (tc.params->>'clip_min_inliers')::float8 AS clip_min_inliers,
                           (tc.params->>'adaptive_t')::float8 AS adaptive_t,
                           (tc.params->>'face_min_sim')::float8 AS face_min_sim,
                           (tc.params->>'exclude_dino_sim')::float8 AS exclude_dino_sim,
                           (tc.params->>'exclude_dino_aligned_sim')::float8 AS exclude_dino_aligned_sim,
                           (tc.params->>'exclude_face_below')::float8 AS exclude_face_below,
                           (tc.params->>'sft_min_quality')::float8 AS sft_min_quality,
                           (tc.params->>'sft_min_aesthetic')::float8 AS sft_min_aesthetic) t
-- which rule admits the pair (the first that holds, in Table 1's order) and which excludes it
CROSS JOIN LATERAL (SELECT
    CASE WHEN ip.dino_sim > t.dino_min_sim AND pv.inliers > t.dino_min_inliers THEN 'dino'
         WHEN ip.clip_sim > t.clip_min_sim AND pv.inliers > t.clip_min_inliers
              AND ip.clip_sim > (1 - t.adaptive_t) * ip.clip_thr + t.adaptive_t THEN 'clip'
         WHEN ip.face_sim > t.face_min_sim THEN 'face' END AS admitted_by,
    CASE WHEN ip.dino_sim > t.exclude_dino_sim THEN 'dino_sim'
         WHEN pv.dino_aligned_sim > t.exclude_dino_aligned_sim THEN 'dino_aligned_sim'
         WHEN ip.face_sim > 0 AND ip.face_sim < t.exclude_face_below THEN 'face_sim'
         WHEN greatest(pv.overlap_source, pv.overlap_target) >= (tv.params->>'crop_containment')::float8
              AND least(pv.overlap_source, pv.overlap_target) < (tv.params->>'crop_overlap')::float8
              THEN 'simple_crop' END AS excluded_by) rule
WHERE a.kind = 'pair';
