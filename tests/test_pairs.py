"""Editing pairs (report §4.3): an image job with CLIP, DINOv2 and faces on real photos and copies derived from
them (a colour edit, an inserted object, a crop, an exact copy) → `curation cluster` → `curation pairs mine`
→ Ray workers (pair_candidates → pair_verify with SIFT) → curated_pairs, with Table 1 applied in SQL.
Also: a pair whose member file is corrupt is an item error of that pair only; hostile and wrong
``--where`` predicates and missing embeddings are refused at submission."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image, ImageEnhance
from sqlalchemy import text

from curation.jobs import load_job
from curation.pairs import (
    PairsError,
    cluster_thresholds,
    rules,
    set_rules,
    submit_mining,
)
from tests.helpers import run_until_done, submit_spec
from tests.test_cli import cli, drain
from workers.stage import get_stage

TINY_CLIP = {"model": "clip-tiny-random"}
TINY_DINO = {"model": "dinov2-tiny-random"}
VERIFY = {"dino_model": "dinov2-tiny-random", "max_side": 512}
ALL = {"min_clip_sim": -1.0, "min_dino_sim": -1.0}  # the tiny random models' cosines mean nothing: keep every kNN


def _derived_photos(dest, skimage_dir) -> dict[str, str]:
    """Real photos and edits of the astronaut photo; name -> file name."""
    dest.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copyfile(skimage_dir / name, dest / name)
    src = Image.open(skimage_dir / "astronaut.png").convert("RGB")
    ImageEnhance.Color(src).enhance(0.3).save(dest / "astronaut_colour.png")  # a colour edit
    inserted = src.copy()
    cup = Image.open(skimage_dir / "coffee.png").convert("RGB").crop((200, 100, 360, 260))
    inserted.paste(cup, (330, 330))  # an inserted object, away from the face
    inserted.save(dest / "astronaut_insert.png")
    src.crop((48, 48, 464, 464)).save(dest / "astronaut_crop.png")  # a crop
    shutil.copyfile(skimage_dir / "astronaut.png", dest / "astronaut_copy.png")  # an exact copy
    ImageEnhance.Brightness(src).enhance(1.3).save(dest / "astronaut_bright.png")  # corrupted after scoring
    return {p.stem: p.name for p in dest.iterdir()}


@pytest.fixture
def image_job(engine, db_url, tmp_path, skimage_dir, ray_local):
    """The image job (probe, clip, dino, faces) on the photos, run to the end, and clustered (k = 2)."""
    from curation.clusters import cluster_job

    folder = tmp_path / "pairs"
    names = _derived_photos(folder, skimage_dir)
    job = submit_spec(engine, {"name": "pairs-images", "modality": "image", "source": {"uri": str(folder)},
                               "stages": [{"name": "probe"}, {"name": "clip", "params": TINY_CLIP},
                                          {"name": "dino", "params": TINY_DINO}, {"name": "faces"}]})
    for stage in ("probe", "clip", "dino", "faces"):
        drain(db_url, stage)
    with engine.connect() as conn:
        ids = dict(conn.execute(text("SELECT a.uri, a.asset_id FROM job_assets ja JOIN assets a USING (asset_id) "
                                     "WHERE ja.job_id = :j"), {"j": job}).all())
    by_name = {stem: ids[str(folder / name)] for stem, name in names.items()}
    cluster_job(engine, db_url, job, k=2, seed=0)
    return job, by_name, folder


def _pairs(engine, job: int) -> dict[frozenset, dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM curated_pairs WHERE job_id = :j"), {"j": job}).mappings().all()
    return {frozenset((r["source_asset_id"], r["target_asset_id"])): dict(r) for r in rows}


def test_mining_finds_the_derived_pairs_with_every_score(engine, db_url, image_job):
    job, ids, folder = image_job
    # a member corrupted after the image job scored it: its pairs fail at verification, alone
    (folder / "astronaut_bright.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png any more")
    # thr_block 4: the clusters' thresholds are computed by several Ray tasks; they equal the in-process ones
    sub = submit_mining(engine, job, k=16, matcher="sift", candidates=ALL, verify=VERIFY, chunk_size=4, thr_block=4)
    assert sub.n_images == len(ids) and sub.n_tasks == 3 and sub.clustering_id is not None and sub.n_thresholds
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT cluster_id, clip_thr, n_members, n_sampled FROM pair_cluster_thresholds "
                                   "WHERE job_id = :j ORDER BY cluster_id"), {"j": sub.job_id}).all()
        clip = next(e for e in load_job(engine, sub.job_id).spec.pairs.embeddings if e.stage == "clip")
        here = cluster_thresholds(conn, sub.clustering_id, sorted(ids.values()), clip)
    assert [(c, n, m) for c, _, n, m in stored] == [(c, n, m) for c, _, n, m in here]
    assert [t for _, t, _, _ in stored] == pytest.approx([t for _, t, _, _ in here], abs=1e-6)
    assert stored and sum(n for _, _, n, _ in stored) <= len(ids)  # a one-member cluster has no threshold
    # two candidate workers: a pair found from both of its images by concurrent tasks is still one pair
    run_until_done(engine, db_url, sub.job_id, {"pair_candidates": 2, "pair_verify": 1}, timeout_s=600)

    pairs = _pairs(engine, sub.job_id)
    n = len(ids)
    assert len(pairs) == n * (n - 1) // 2  # k ≥ n - 1: every unordered pair once (a→b and b→a are one)
    a = ids["astronaut"]
    for edit in ("astronaut_colour", "astronaut_insert", "astronaut_crop", "astronaut_copy"):
        row = pairs[frozenset((a, ids[edit]))]
        assert row["source_asset_id"] < row["target_asset_id"] and row["found_by"] in ("clip", "dino", "both")
        assert -1 <= row["clip_sim"] <= 1.0001 and -1 <= row["dino_sim"] <= 1.0001
        assert row["inliers"] >= 20 and row["n_groups"] >= 1 and row["matcher"] == "sift", (edit, row)
        assert row["source_uri"].endswith(".png") and row["target_uri"].endswith(".png")
        assert row["face_sim"] is not None and row["face_sim"] > 0.7  # one face, the same person
    unrelated = pairs[frozenset((a, ids["coffee"]))]
    assert unrelated["inliers"] < min(pairs[frozenset((a, ids[e]))]["inliers"]
                                      for e in ("astronaut_colour", "astronaut_insert"))
    assert unrelated["face_sim"] is None  # the coffee photo has no face
    # the exact copy: identical embeddings, excluded as a near duplicate by Table 1
    copy = pairs[frozenset((a, ids["astronaut_copy"]))]
    assert copy["dino_sim"] > 0.999 and copy["excluded_by"] == "dino_sim" and not copy["is_kept"]
    # clusters: every pair carries its cluster and threshold (k = 2 clusters over 9 images)
    assert all(r["cluster_id"] is not None for r in pairs.values())
    assert any(r["clip_thr"] is not None for r in pairs.values())
    assert all(r["is_sft"] is None for r in pairs.values())  # no Q-Align in the image job

    # the corrupt member: an item error for each of its pairs at pair_verify, nothing else failed
    bright = ids["astronaut_bright"]
    with engine.connect() as conn:
        errors = conn.execute(text(
            "SELECT e.asset_id, e.stage, e.error_class, e.message FROM item_errors e WHERE e.job_id = :j"),
            {"j": sub.job_id}).all()
        verified = conn.execute(text("SELECT count(*) FROM curated_pairs WHERE job_id = :j AND pair_verify_version "
                                     "IS NOT NULL"), {"j": sub.job_id}).scalar_one()
        status = conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": sub.job_id}).scalar_one()
    bad = {pid for pid, r in ((r["pair_id"], r) for r in pairs.values())
           if bright in (r["source_asset_id"], r["target_asset_id"])}
    media = [e for e in errors if e.asset_id in bad]
    assert len(bad) == n - 1 and {e.asset_id for e in media} == bad
    assert all(e.stage == "pair_verify" and e.error_class == "not_an_image" and f"asset {bright}" in e.message
               for e in media)
    # every other pair has its verification (or, where the geometry itself failed on it, its own error)
    assert verified + len(errors) == len(pairs) and len(errors) - len(media) <= 2 and status == "completed"

    # the kNN statement the runtime runs is an HNSW index scan per image (a handful of rows: the planner
    # is shown that the index is usable)
    from curation.embeddings import index_name
    from curation.pairs import knn_query

    for emb in load_job(engine, sub.job_id).spec.pairs.embeddings:
        with engine.begin() as conn:
            # statistics as of now, not whatever autovacuum caught mid-job (rows=1 estimates made the plan flip)
            conn.execute(text(f"ANALYZE job_assets, {get_stage(emb.stage).result_table}"))
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
            plan = "\n".join(conn.execute(text("EXPLAIN " + knn_query(emb).text),
                                          {"ids": [a], "c": emb.configs, "job": sub.job_id, "k": 4}).scalars())
        assert index_name(emb.model, emb.dim, get_stage(emb.stage).result_table) in plan, plan

    # the same pairs are the same assets in another mining job: verifications are reused, not redone
    again = submit_mining(engine, job, k=16, matcher="sift", candidates=ALL, verify=VERIFY,
                          where=f"asset_id <> {bright}")
    run_until_done(engine, db_url, again.job_id, {"pair_candidates": 1, "pair_verify": 1}, timeout_s=600)
    second = _pairs(engine, again.job_id)
    assert set(second) == set(pairs) - {k for k, r in pairs.items() if r["pair_id"] in bad}
    assert all(second[k]["pair_id"] == pairs[k]["pair_id"] and second[k]["inliers"] == pairs[k]["inliers"]
               for k in second)


def test_table1_rules_apply_in_sql_and_retune_without_recompute(engine, db_url, image_job):
    job, _, _ = image_job
    sub = submit_mining(engine, job, k=3, matcher="sift", candidates=ALL, verify=VERIFY,
                        stages=["pair_candidates"])  # candidates only: the geometry is set by hand below
    run_until_done(engine, db_url, sub.job_id, {"pair_candidates": 1}, timeout_s=300)
    pairs = list(_pairs(engine, sub.job_id).values())
    assert len(pairs) >= 6
    # known scores: (dino_sim, clip_sim, clip_thr, face_sim, inliers, dino_aligned_sim) -> (admitted, excluded)
    cases = [
        ((0.85, 0.5, 0.9, None, 350, 0.9), ("dino", None)),  # DINO rule
        ((0.85, 0.5, 0.9, None, 250, 0.9), (None, None)),  # too few inliers for DINO
        ((0.5, 0.95, 0.9, None, 250, 0.9), ("clip", None)),  # CLIP: 0.95 > 0.85·0.9 + 0.15 = 0.915
        ((0.5, 0.90, 0.9, None, 250, 0.9), (None, None)),  # CLIP under the adaptive threshold
        ((0.5, 0.5, None, 0.8, 0, None), ("face", None)),  # faces
        ((0.98, 0.99, 0.9, None, 900, 0.9), ("dino", "dino_sim")),  # near copy
        ((0.85, 0.5, 0.9, 0.3, 350, 0.9), ("dino", "face_sim")),  # another person
    ]
    verify_cls = get_stage("pair_verify")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
                          "VALUES ('pv-test', 'pair_verify', 'pair_verify@x', '{}', '{}') ON CONFLICT DO NOTHING"))
        conn.execute(text("INSERT INTO job_configs (job_id, stage, config_id) VALUES (:j, 'pair_verify', 'pv-test')"),
                     {"j": sub.job_id})
        conn.execute(text("INSERT INTO job_stages (job_id, stage, position, params) VALUES (:j, 'pair_verify', 1, "
                          "CAST(:p AS jsonb))"), {"j": sub.job_id, "p": verify_cls.Params().model_dump_json()})
        for row, ((dino, clip, thr, face, inliers, aligned), _) in zip(pairs, cases):
            conn.execute(text("UPDATE image_pairs SET dino_sim = :d, clip_sim = :c, clip_thr = :t, face_sim = :f "
                              "WHERE asset_id = :a AND job_id = :j"),
                         {"d": dino, "c": clip, "t": thr, "f": face, "a": row["pair_id"], "j": sub.job_id})
            conn.execute(text(
                "INSERT INTO pair_verify_results (asset_id, config_id, stage_version, matcher, matcher_sha256, "
                "n_matches, inliers, n_groups, group_inliers, fundamental_inliers, overlap_source, overlap_target, "
                "dino_aligned_sim, is_simple_crop, dino_model, dino_sha256) VALUES (:a, 'pv-test', 'pair_verify@x', "
                "'sift', '-', :n, :n, 1, ARRAY[:n], :n, 1.0, 1.0, :al, false, 'd', '-')"),
                {"a": row["pair_id"], "n": inliers, "al": aligned})
    got = {r["pair_id"]: (r["admitted_by"], r["excluded_by"]) for r in _pairs(engine, sub.job_id).values()}
    assert [got[row["pair_id"]] for row in pairs[:len(cases)]] == [want for _, want in cases]

    # re-tune: T = 0 makes the adaptive threshold clip_thr itself (0.90 > 0.9 fails, 0.95 passes); fewer
    # DINO inliers admit the second case — nothing recomputed, the view reads the job's params
    assert rules(engine, sub.job_id)["adaptive_t"] == 0.15
    set_rules(engine, sub.job_id, {"dino_min_inliers": 200, "adaptive_t": 0.0})
    got = {r["pair_id"]: r["admitted_by"] for r in _pairs(engine, sub.job_id).values()}
    assert [got[row["pair_id"]] for row in pairs[:4]] == ["dino", "dino", "clip", None]
    with pytest.raises(PairsError, match="not a Table 1 threshold"):
        set_rules(engine, sub.job_id, {"k": 3})
    # the same through the command line, and the job's funnel by the view
    out = cli(db_url, "pairs", "rules", "--job", str(sub.job_id), "--set", "dino_min_inliers=400").stdout
    assert "dino_min_inliers" in out and "400" in out
    got = {r["pair_id"]: r["admitted_by"] for r in _pairs(engine, sub.job_id).values()}
    assert [got[row["pair_id"]] for row in pairs[:3]] == [None, None, "clip"]
    status = cli(db_url, "status", str(sub.job_id)).stdout
    assert "candidate pairs" in status and "admitted (Table 1)" in status
    refused = cli(db_url, "pairs", "rules", "--job", str(sub.job_id), "--set", "adaptive_t=2", check=False)
    assert refused.returncode == 1 and "adaptive_t" in refused.stderr


HOSTILE = [
    ("decoded; DROP TABLE assets", "no ';'"),
    ("decoded -- comment", "comments"),
    ("set_config('statement_timeout', '0', false) IS NOT NULL", "set_config"),
    ("asset_id IN (SELECT unnest(asset_ids) FROM tasks)", "not a valid predicate"),  # the reader may not read it
    ("no_such_column > 1", "not a valid predicate"),
]


def _embedded_job(engine, db_url, tmp_path, skimage_dir, stages: list[str]) -> int:
    """A small image job (two photos) run through ``stages`` with the tiny models."""
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        shutil.copyfile(skimage_dir / name, folder / name)
    params = {"clip": TINY_CLIP, "dino": TINY_DINO}
    job = submit_spec(engine, {"name": "small", "modality": "image", "source": {"uri": str(folder)},
                               "stages": [{"name": s, "params": params.get(s, {})} for s in stages]})
    for stage in stages:
        drain(db_url, stage)
    return job


def test_hostile_or_wrong_where_is_refused_at_submission(engine, db_url, tmp_path, skimage_dir):
    job = _embedded_job(engine, db_url, tmp_path, skimage_dir, ["probe", "clip", "dino"])
    for where, message in HOSTILE:
        with pytest.raises(PairsError, match=message):
            submit_mining(engine, job, where=where, matcher="sift", verify=VERIFY)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1  # nothing recorded
    with pytest.raises(PairsError, match="matches --where"):
        submit_mining(engine, job, where="decoded AND width > 100000", matcher="sift", verify=VERIFY)
    # the command line: refused with the reason, then submitted (pair_verify embeds the aligned crops with
    # the image job's DINOv2)
    refused = cli(db_url, "pairs", "mine", "--job", str(job), "--where", "decoded; DELETE FROM assets", check=False)
    assert refused.returncode == 1 and "no ';'" in refused.stderr
    out = cli(db_url, "pairs", "mine", "--job", str(job), "--matcher", "sift", "--k", "4")
    assert "pair-mining job" in out.stdout and "2 images" in out.stdout and "no finished clustering" in out.stderr
    with engine.connect() as conn:
        spec = conn.execute(text("SELECT spec FROM jobs WHERE modality = 'pair'")).scalar_one()
    assert [s["name"] for s in spec["stages"]] == ["pair_candidates", "pair_verify"]
    assert spec["stages"][1]["params"] == {"matcher": "sift", "dino_model": TINY_DINO["model"]}


def test_a_job_without_dino_embeddings_is_refused(engine, db_url, tmp_path, skimage_dir):
    job = _embedded_job(engine, db_url, tmp_path, skimage_dir, ["probe", "clip"])
    with pytest.raises(PairsError, match="no dino embeddings"):
        submit_mining(engine, job, matcher="sift", verify=VERIFY)
    with pytest.raises(PairsError, match="no job"):
        submit_mining(engine, 10**9)
