"""K-means clusters of a job's embeddings, and semantic near-duplicates within clusters (report §4.3;
the semantic dedup of NeMo Curator's SemDedup).

``curation cluster --job J``:

1. **Fit** on a seeded sample of the job's embeddings (CLIP for an image job: ``clip_results`` of the
   job's ``clip`` configurations; the scene embeddings of ``video_clip`` for a video job) with faiss's
   spherical K-means (cosine: vectors and centroids on the unit sphere; faiss on the GPU when it sees
   one). Default k = 10,000 as the report; a job with fewer sampled embeddings gets k = their count.
2. **Assign** every asset as a Ray-distributed pass: one task per chunk of asset ids reads its
   embeddings from the database, finds the nearest centroid and writes ``asset_clusters`` (cluster id,
   cosine distance to the centroid).
3. **Semantic duplicates**: one task per group of clusters compares the members of each cluster pairwise
   and writes the pairs with cosine similarity ≥ 1 − ε (``semantic_duplicates``, both directions, at most
   ``max_pairs`` per asset). ε = 0.01 by default, NeMo Curator's ``eps_to_extract``. The views flag an
   asset as ``semantic_duplicate_of`` a pair partner that ranks higher by the near-duplicate rule (images:
   more pixels, more bytes, lower id; scenes: longer, lower id), so ``semantic_duplicate_of IS NULL`` keeps
   one per group.

Every run is a new ``clusterings`` row (embedding configs, k, seed, sample size, centroids); the views
show the job's newest *finished* one (``finished_at`` is set after the last task), so a run that fails
half-way is never seen and an older clustering is never overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, Engine, text

DEFAULT_K = 10_000  # report §4.3
DEFAULT_EPSILON = 0.01  # NeMo Curator SemDedup's eps_to_extract: duplicates at cosine >= 1 - eps
DEFAULT_CHUNK = 20_000  # asset ids per Ray task
DEFAULT_MAX_PAIRS = 16  # semantic-duplicate partners kept per asset (the most similar)
KMEANS_ITERATIONS = 20
EMBEDDING_STAGES = {"image": "clip", "video": "video_clip"}  # ``--embedding clip`` by the job's modality


class ClusterError(ValueError):
    """The job cannot be clustered as asked (no such job, no embeddings); the message says what to do."""


@dataclass(frozen=True)
class EmbeddingSource:
    """Which stored embeddings a clustering reads: the job's rows of one stage's configurations."""

    job_id: int
    kind: str  # image | scene
    stage: str  # clip | video_clip
    configs: tuple[str, ...]
    model: str
    dim: int


@dataclass(frozen=True)
class ClusteringResult:
    clustering_id: int
    k: int
    n_assets: int
    sample_size: int
    n_duplicate_pairs: int
    fit_seconds: float
    assign_seconds: float
    dedup_seconds: float


def embedding_source(conn: Connection, job_id: int, embedding: str = "clip") -> EmbeddingSource:
    """The embeddings ``curation cluster`` reads for the job: ``clip`` means the CLIP embeddings of the
    job's modality (``clip`` for images, ``video_clip`` for scenes); a stage name picks that stage."""
    modality = conn.execute(text("SELECT modality FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar()
    if modality is None:
        raise ClusterError(f"no job {job_id}")
    stage = EMBEDDING_STAGES[modality] if embedding == "clip" else embedding
    if stage not in EMBEDDING_STAGES.values():
        raise ClusterError(f"--embedding {embedding!r}: one of clip, {', '.join(EMBEDDING_STAGES.values())}")
    configs = tuple(conn.execute(text("SELECT config_id FROM job_configs WHERE job_id = :j AND stage = :s "
                                      "ORDER BY config_id"), {"j": job_id, "s": stage}).scalars())
    models = conn.execute(text("SELECT DISTINCT model, vector_dims(embedding) FROM clip_results "
                               "WHERE config_id = ANY(:c)"), {"c": list(configs)}).all()
    if not models:
        raise ClusterError(f"job {job_id} has no {stage} embeddings: add the {stage} stage to its spec and run it")
    if len(models) > 1:
        raise ClusterError(f"job {job_id}'s {stage} embeddings come from several models "
                           f"({', '.join(m for m, _ in models)}); cluster one job per model")
    return EmbeddingSource(job_id, "scene" if modality == "video" else "image", stage, configs,
                           models[0][0], int(models[0][1]))


def job_asset_ids(conn: Connection, src: EmbeddingSource) -> list[int]:
    """The job's assets (of its kind) that have an embedding under its configurations, ascending."""
    return list(conn.execute(text(
        "SELECT ja.asset_id FROM job_assets ja JOIN assets a ON a.asset_id = ja.asset_id "
        "WHERE ja.job_id = :j AND a.kind = :kind AND EXISTS (SELECT 1 FROM clip_results r "
        "WHERE r.asset_id = ja.asset_id AND r.config_id = ANY(:c)) ORDER BY ja.asset_id"),
        {"j": src.job_id, "kind": src.kind, "c": list(src.configs)}).scalars())


def read_embeddings(conn: Connection, ids: Sequence[int], configs: Sequence[str], dim: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(asset ids, unit-norm float32 [n, dim]) of the newest embedding of each asset under ``configs``,
    read in pgvector's binary form (``vector_send``: int16 dim, int16 unused, big-endian float32s)."""
    rows = conn.execute(text(
        "SELECT DISTINCT ON (r.asset_id) r.asset_id, vector_send(r.embedding) FROM clip_results r "
        "WHERE r.asset_id = ANY(:ids) AND r.config_id = ANY(:c) ORDER BY r.asset_id, r.created_at DESC"),
        {"ids": list(map(int, ids)), "c": list(configs)}).all()
    out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    x = np.empty((len(rows), dim), dtype=np.float32)
    for i, (_, blob) in enumerate(rows):
        x[i] = np.frombuffer(bytes(blob), dtype=">f4", offset=4, count=dim)
    return out_ids, normalize(x)


def normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def library_name() -> str:
    import faiss

    return f"faiss {faiss.__version__}" + (" gpu" if faiss.get_num_gpus() else "")


def fit_centroids(x: np.ndarray, k: int, *, seed: int, niter: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Spherical K-means (faiss) of the unit vectors ``x``: [k, dim] unit-norm float32 centroids."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=bool(faiss.get_num_gpus()),
                      max_points_per_centroid=max(256, -(-len(x) // k)), verbose=False)  # x is the sample already
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return normalize(km.centroids)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids int32, cosine distances float32) of unit vectors against unit centroids."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    sims, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int32), (1.0 - sims[:, 0]).astype(np.float32)


def semantic_pairs(ids: np.ndarray, x: np.ndarray, *, epsilon: float, max_pairs: int = DEFAULT_MAX_PAIRS,
                   block: int = 1024) -> list[tuple[int, int, float]]:
    """(asset, other, cosine) for each asset of one cluster and up to ``max_pairs`` most similar others
    with cosine ≥ 1 − ε; computed in row blocks so a large cluster needs ``block × n`` floats at a time."""
    out: list[tuple[int, int, float]] = []
    threshold = 1.0 - epsilon
    for start in range(0, len(ids), block):
        sims = x[start:start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not a pair with itself
        for r in np.flatnonzero((sims >= threshold).any(axis=1)):
            hits = np.flatnonzero(sims[r] >= threshold)
            hits = hits[np.argsort(-sims[r, hits], kind="stable")[:max_pairs]]
            out += [(int(ids[start + r]), int(ids[j]), float(sims[r, j])) for j in hits]
    return out


def sample_ids(ids: Sequence[int], size: int, seed: int) -> np.ndarray:
    """A seeded sample without replacement, ascending (the same ids for the same seed and job)."""
    ids = np.asarray(ids, dtype=np.int64)
    if size >= len(ids):
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))


def default_sample_size(n: int, k: int) -> int:
    """All embeddings up to 40 per centroid (faiss warns below 39), at least 100,000 when there are more."""
    return min(n, max(40 * k, 100_000))


# --- the Ray passes ----------------------------------------------------------------------------------


def _assign_chunk(database_url: str, clustering_id: int, ids: list[int], configs: tuple[str, ...], dim: int,
                  centroids: np.ndarray) -> int:
    import faiss

    from curation.db import make_engine

    faiss.omp_set_num_threads(1)  # one CPU per Ray task
    engine = make_engine(database_url, pool_size=1, application_name="curation-cluster")
    try:
        with engine.begin() as conn:
            got, x = read_embeddings(conn, ids, configs, dim)
            labels, dist = nearest_centroid(x, centroids)
            conn.execute(text(
                "INSERT INTO asset_clusters (clustering_id, asset_id, cluster_id, distance) "
                "SELECT :k, unnest(CAST(:ids AS bigint[])), unnest(CAST(:l AS integer[])), unnest(CAST(:d AS real[])) "
                "ON CONFLICT DO NOTHING"),
                {"k": clustering_id, "ids": got.tolist(), "l": labels.tolist(), "d": dist.tolist()})
    finally:
        engine.dispose()
    return len(got)


def _dedup_clusters(database_url: str, clustering_id: int, clusters: list[int], configs: tuple[str, ...],
                    dim: int, epsilon: float, max_pairs: int) -> int:
    from curation.db import make_engine

    engine = make_engine(database_url, pool_size=1, application_name="curation-cluster")
    n = 0
    try:
        with engine.begin() as conn:
            members = conn.execute(text(
                "SELECT cluster_id, asset_id FROM asset_clusters WHERE clustering_id = :k "
                "AND cluster_id = ANY(:c) ORDER BY cluster_id, asset_id"), {"k": clustering_id, "c": clusters}).all()
            got, x = read_embeddings(conn, [a for _, a in members], configs, dim)
            row_of = {int(a): i for i, a in enumerate(got)}
            by_cluster: dict[int, list[int]] = {}
            for c, a in members:
                by_cluster.setdefault(c, []).append(row_of[a])
            pairs = []
            for rows in by_cluster.values():
                if len(rows) > 1:
                    pairs += semantic_pairs(got[rows], x[rows], epsilon=epsilon, max_pairs=max_pairs)
            if pairs:
                conn.execute(text(
                    "INSERT INTO semantic_duplicates (clustering_id, asset_id, other_id, cosine) "
                    "SELECT :k, unnest(CAST(:a AS bigint[])), unnest(CAST(:o AS bigint[])), unnest(CAST(:s AS real[])) "
                    "ON CONFLICT DO NOTHING"),
                    {"k": clustering_id, "a": [p[0] for p in pairs], "o": [p[1] for p in pairs],
                     "s": [p[2] for p in pairs]})
            n = len(pairs)
    finally:
        engine.dispose()
    return n


def _groups_by_size(sizes: Sequence[tuple[int, int]], target: int) -> list[list[int]]:
    """Consecutive clusters grouped until a group holds about ``target`` members."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for cluster, size in sizes:
        current.append(cluster)
        total += size
        if total >= target:
            groups.append(current)
            current, total = [], 0
    if current:
        groups.append(current)
    return groups


def cluster_job(engine: Engine, database_url: str, job_id: int, *, embedding: str = "clip", k: int = DEFAULT_K,
                sample: int | None = None, seed: int = 0, epsilon: float = DEFAULT_EPSILON,
                chunk_size: int = DEFAULT_CHUNK, max_pairs: int = DEFAULT_MAX_PAIRS, address: str | None = None,
                log: Callable[[str], None] | None = None) -> ClusteringResult:
    """Fit, assign (Ray), find semantic duplicates (Ray), then mark the clustering finished. Ray is
    joined at ``address`` or started locally unless it is running already."""
    import ray

    from workers.supervisor import ray_init

    if k < 1 or not 0.0 <= epsilon < 1.0 or chunk_size < 1:
        raise ClusterError("k and --chunk-size must be at least 1 and epsilon in [0, 1)")
    log = log or (lambda _msg: None)
    with engine.connect() as conn:
        src = embedding_source(conn, job_id, embedding)
        ids = job_asset_ids(conn, src)
        picked = sample_ids(ids, sample if sample is not None else default_sample_size(len(ids), k), seed)
        started = time.perf_counter()
        xs = [read_embeddings(conn, picked[i:i + chunk_size].tolist(), src.configs, src.dim)[1]
              for i in range(0, len(picked), chunk_size)]
    x = np.concatenate(xs)
    k_fit = min(k, len(x))
    if k_fit < k:
        log(f"k = {k_fit}: the sample holds {len(x)} embeddings, fewer than k = {k}")
    centroids = fit_centroids(x, k_fit, seed=seed)
    fit_s = time.perf_counter() - started
    log(f"fitted {k_fit} centroids on {len(x)} of {len(ids)} embeddings ({src.model}, {src.dim}-d) in {fit_s:.1f} s")
    with engine.begin() as conn:
        clustering_id = conn.execute(text(
            "INSERT INTO clusterings (job_id, kind, embedding_stage, embedding_configs, model, dim, k, seed, "
            "sample_size, n_assets, library, epsilon, centroids, fit_seconds) VALUES (:j, :kind, :st, :c, :m, :d, "
            ":k, :seed, :n, :na, :lib, :eps, :cent, :fit) RETURNING clustering_id"),
            {"j": job_id, "kind": src.kind, "st": src.stage, "c": list(src.configs), "m": src.model, "d": src.dim,
             "k": k_fit, "seed": seed, "n": len(x), "na": len(ids), "lib": library_name(), "eps": epsilon,
             "cent": centroids.astype("<f4").tobytes(), "fit": fit_s}).scalar_one()

    ray_init(address)
    assign = ray.remote(num_cpus=1)(_assign_chunk)
    dedup = ray.remote(num_cpus=1)(_dedup_clusters)
    started = time.perf_counter()
    ref = ray.put(centroids)
    assigned = sum(ray.get([assign.remote(database_url, clustering_id, ids[i:i + chunk_size], src.configs,
                                          src.dim, ref) for i in range(0, len(ids), chunk_size)]))
    assign_s = time.perf_counter() - started
    log(f"assigned {assigned} assets in {assign_s:.1f} s")
    started = time.perf_counter()
    with engine.connect() as conn:
        sizes = conn.execute(text("SELECT cluster_id, count(*) FROM asset_clusters WHERE clustering_id = :k "
                                  "GROUP BY 1 ORDER BY 1"), {"k": clustering_id}).all()
    n_pairs = sum(ray.get([dedup.remote(database_url, clustering_id, group, src.configs, src.dim, epsilon, max_pairs)
                           for group in _groups_by_size(sizes, chunk_size)]))
    dedup_s = time.perf_counter() - started
    log(f"{n_pairs} semantic-duplicate pairs (cosine >= {1 - epsilon:g}) in {dedup_s:.1f} s")
    with engine.begin() as conn:
        conn.execute(text("UPDATE clusterings SET finished_at = now(), assign_seconds = :s WHERE clustering_id = :k"),
                     {"s": assign_s, "k": clustering_id})
    return ClusteringResult(clustering_id, k_fit, assigned, len(x), n_pairs, fit_s, assign_s, dedup_s)
