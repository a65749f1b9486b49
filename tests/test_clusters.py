"""`curation cluster`: K-means over stored CLIP embeddings (faiss fit, Ray assign), semantic duplicates
within clusters, both versioned and shown in curated_images; balanced export by cluster or any column."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from curation.balance import Balance
from curation.clusters import cluster_job, semantic_pairs
from curation.export import ExportError, export_slice
from tests.helpers import submit_spec
from tests.test_cli import drain

DIM = 16


def _embed(engine, job: int, vectors: dict[int, np.ndarray], config: str = "clip-test-config") -> None:
    """Store ``vectors`` as the job's clip embeddings under one configuration (as the clip stage would)."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
                          "VALUES (:c, 'clip', 'clip@1', '{}', '{}') ON CONFLICT DO NOTHING"), {"c": config})
        conn.execute(text("INSERT INTO job_configs (job_id, stage, config_id) VALUES (:j, 'clip', :c)"),
                     {"j": job, "c": config})
        for asset, v in vectors.items():
            conn.execute(text(
                "INSERT INTO clip_results (asset_id, config_id, stage_version, embedding, location, location_p, style, "
                "style_p, main_subject, main_subject_p, place_type, place_type_p, model, weights_sha256, "
                "taxonomy_sha256) VALUES (:a, :c, 'clip@1', CAST(:v AS vector), 'x', 1, 'x', 1, 'x', 1, 'x', 1, "
                "'clip-test', 's', 't')"), {"a": asset, "c": config, "v": "[" + ",".join(map(str, v)) + "]"})


def _three_groups(ids: list[int], seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Embeddings in three well-separated groups (group = position mod 3); the first two members of
    group 0 are near-identical (cosine > 0.999)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[:3] * 10
    vectors, group = {}, {}
    for i, a in enumerate(ids):
        g = i % 3
        vectors[a] = centres[g] + rng.normal(0, 1.5, DIM).astype(np.float32)
        group[a] = g
    g0 = [a for a in ids if group[a] == 0]
    vectors[g0[1]] = vectors[g0[0]] + 0.01
    return vectors, group


@pytest.fixture
def clustered_job(engine, db_url, photo_dir, ray_local):
    job = submit_spec(engine, {"name": "c", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}]})
    drain(db_url, "probe")
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT asset_id FROM curated_images WHERE decoded ORDER BY asset_id")).scalars().all()
    vectors, group = _three_groups(list(ids))
    _embed(engine, job, vectors)
    return job, list(ids), vectors, group


def test_clusters_assign_every_asset_and_new_runs_never_overwrite(engine, db_url, clustered_job):
    job, ids, _, group = clustered_job
    first = cluster_job(engine, db_url, job, k=3, seed=1, chunk_size=4)  # several Ray tasks
    assert first.n_assets == len(ids) == first.sample_size and first.k == 3
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT asset_id, cluster_id, semantic_duplicate_of FROM curated_images "
                                 "WHERE job_id = :j AND decoded ORDER BY asset_id"), {"j": job}).all()
        row = conn.execute(text("SELECT k, seed, sample_size, library, epsilon, length(centroids) AS n, "
                                "embedding_configs, finished_at FROM clusterings")).one()
    assert row.k == 3 and row.seed == 1 and row.n == 3 * DIM * 4 and row.library.startswith("faiss")
    assert row.epsilon == 0.01 and row.embedding_configs == ["clip-test-config"] and row.finished_at is not None
    # the three groups are recovered: one cluster per group
    by_group = {}
    for r in rows:
        by_group.setdefault(group[r.asset_id], set()).add(r.cluster_id)
    assert all(len(c) == 1 for c in by_group.values()) and len(set().union(*by_group.values())) == 3

    # the near-identical pair: the lower-ranked (fewer pixels, then fewer bytes, then higher id) is flagged
    g0 = [a for a in ids if group[a] == 0]
    flagged = {r.asset_id: r.semantic_duplicate_of for r in rows if r.semantic_duplicate_of is not None}
    assert len(flagged) == 1 and set(flagged.items()) <= {(g0[0], g0[1]), (g0[1], g0[0])}

    # a second run (another k) is a new clustering; the view shows the newest, the first stays stored
    second = cluster_job(engine, db_url, job, k=2, seed=1)
    assert second.clustering_id != first.clustering_id
    with engine.connect() as conn:
        shown = conn.execute(text("SELECT count(DISTINCT cluster_id) FROM curated_images WHERE job_id = :j "
                                  "AND cluster_id IS NOT NULL"), {"j": job}).scalar_one()
        kept = conn.execute(text("SELECT clustering_id, count(*) FROM asset_clusters GROUP BY 1 ORDER BY 1")).all()
    assert shown == 2
    assert [(c, n) for c, n in kept] == [(first.clustering_id, len(ids)), (second.clustering_id, len(ids))]


def test_the_fit_is_deterministic_for_a_seed(engine, db_url, clustered_job):
    job, _, _, _ = clustered_job
    a = cluster_job(engine, db_url, job, k=3, seed=7, sample=9)
    b = cluster_job(engine, db_url, job, k=3, seed=7, sample=9)
    with engine.connect() as conn:
        cents = conn.execute(text("SELECT centroids FROM clusterings WHERE clustering_id IN (:a, :b) "
                                  "ORDER BY clustering_id"), {"a": a.clustering_id, "b": b.clustering_id}).scalars().all()
    assert a.sample_size == 9 and bytes(cents[0]) == bytes(cents[1])


def test_balanced_export_keeps_per_cluster_rows_deterministically(engine, db_url, clustered_job, tmp_path):
    job, _, _, group = clustered_job
    cluster_job(engine, db_url, job, k=3, seed=1)

    def exported(out, balance):
        export_slice(engine, predicate="decoded", output=str(out), job_id=job, balance=balance)
        return [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]

    one = exported(tmp_path / "a", Balance("cluster", 2, seed=5))
    again = exported(tmp_path / "b", Balance("cluster", 2, seed=5))
    assert len(one) == 6 and sorted(r["asset_id"] for r in one) == sorted(r["asset_id"] for r in again)
    assert sorted(group[r["asset_id"]] for r in one) == [0, 0, 1, 1, 2, 2]
    assert "balance_rank" not in one[0] and "cluster_id" in one[0]
    by_format = exported(tmp_path / "c", Balance("format", 1))  # any view column
    assert len(by_format) == len({r["format"] for r in exported(tmp_path / "d", None)})
    with pytest.raises(ExportError, match="no column 'no_such'"):
        export_slice(engine, predicate="decoded", output=str(tmp_path / "e"), job_id=job,
                     balance=Balance("no_such", 1))


def test_semantic_pairs_within_a_cluster():
    x = np.array([[1, 0], [0.9999, 0.0141], [0, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = semantic_pairs(np.array([10, 11, 12]), x, epsilon=0.01, block=2)
    assert sorted((a, b) for a, b, _ in pairs) == [(10, 11), (11, 10)]
    assert semantic_pairs(np.array([10, 11, 12]), x, epsilon=0.00001) == []
