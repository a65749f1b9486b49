"""Editing-pair mining (report §4.3, Figure 5, Table 1): a pair-mining job over an image job's slice.

- ``submit_mining`` (``curation pairs mine --job J``): checks that J has CLIP and DINOv2 embeddings, picks
  its slice (``--where``, run as the read-only role like export predicates), computes each cluster's
  adaptive CLIP threshold from J's newest clustering, and records a job of modality ``pair`` whose first
  stage, ``pair_candidates``, runs on the slice's images — one transaction, so a refused submission leaves
  nothing. ``curation worker`` runs it like any job; status, cancel and retry work as for any job.
- What the runtime runs for the pair stages (``workers/runtime.py``; stage modules run no SQL):
  ``neighbourhoods`` (the kNN queries: pgvector HNSW with iterative scans, filtered to the job's slice),
  ``insert_pairs`` (pair assets + ``image_pairs`` rows in the completion transaction) and ``pair_members``
  (the two images of a pair and their results in the image job).
- ``set_rules``: re-tune Table 1's thresholds of a mining job; ``curated_pairs`` applies them when read.

The adaptive threshold (``clip_thr``, stored per cluster in ``pair_cluster_thresholds`` and per pair in
``image_pairs``): for each cluster of the clustering, up to ``thr_sample`` of its members in the slice
(seeded) are compared pairwise by CLIP; each member's *top similarity* is its highest cosine to another
sampled member, and ``clip_thr`` is the ``thr_quantile`` quantile (default 0.5, the median) of those. A
cluster with fewer than two members in the slice has no threshold. The clusters are read in groups of
about 20,000 sampled embeddings, one Ray task per group (10,000 clusters × 1,000: about 500 tasks). The rule ``clip_sim > (1 − T)·clip_thr
+ T`` (T = 0.15) is applied by ``curated_pairs`` from the job's params, so T can be re-tuned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, text

from curation.broker import chunked, enqueue
from curation.spec import PairEmbedding, PairsSpec, SpecError, parse_spec

# The stages of a pair-mining job, in order: the one place that lists them. A stage is added here and
# registered in ``workers/stage.py`` (e.g. the instruction captions after verification).
PAIR_STAGES: tuple[str, ...] = ("pair_candidates", "pair_verify")
# the VLM step (report §4.3, last of Figure 5), added when an instruction captioner is given: its default model is
# a 32B VLM that must be pulled first, so a mining job without one still runs
INSTRUCTION_STAGE = "pair_instruction"
EMBEDDING_STAGES = ("clip", "dino")
DEFAULT_WHERE = "decoded"
THR_QUANTILE = 0.5
THR_SAMPLE = 1000
THR_BLOCK = 20_000  # embeddings read at a time while computing the thresholds


class PairsError(ValueError):
    """A pair-mining request that cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class MiningSubmission:
    job_id: int
    image_job: int
    n_images: int
    n_tasks: int
    clustering_id: int | None
    n_thresholds: int  # clusters that got an adaptive threshold


def pair_stages() -> list[str]:
    """``PAIR_STAGES`` that are registered (a stage still being built is left out)."""
    from workers.stage import builtin_stage_names

    known = set(builtin_stage_names())
    return [s for s in PAIR_STAGES if s in known]


# --- submission ------------------------------------------------------------------------------------


def _embedding(conn: Connection, image_job: int, stage: str) -> PairEmbedding:
    from workers.stage import get_stage

    table = get_stage(stage).result_table
    configs = list(conn.execute(text("SELECT config_id FROM job_configs WHERE job_id = :j AND stage = :s "
                                     "ORDER BY config_id"), {"j": image_job, "s": stage}).scalars())
    row = None
    for config in configs:  # one row per configuration tells its model and width
        row = conn.execute(text(f"SELECT model, vector_dims(embedding) AS dim FROM {table} "
                                "WHERE config_id = :c LIMIT 1"), {"c": config}).first()
        if row is not None:
            break
    if row is None:
        raise PairsError(f"image job {image_job} has no {stage} embeddings: add the {stage} stage to its spec, "
                         f"run it, then mine pairs (pairs need CLIP and DINOv2 neighbours)")
    return PairEmbedding(stage=stage, model=row.model, dim=int(row.dim), configs=configs)


def select_slice(engine: Engine, image_job: int, where: str) -> list[int]:
    """The image job's assets matching ``where`` over ``curated_images``, run as the read-only role
    (``curation.user_sql``): a hostile predicate is refused before anything runs."""
    from curation.user_sql import UnsafeSQL, check_predicate, reader_engine

    try:
        check_predicate(where, what="--where")
    except UnsafeSQL as exc:
        raise PairsError(str(exc)) from None
    reader = reader_engine(engine, timeout_s=600.0)
    try:
        with reader.connect() as conn:
            return list(conn.execute(text(f"SELECT asset_id FROM curated_images WHERE job_id = :j AND ({where}) "
                                          "ORDER BY asset_id"), {"j": image_job}).scalars())
    except Exception as exc:  # noqa: BLE001 - any error of the reader's query is the user's predicate
        msg = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise PairsError(f"--where: not a valid predicate over curated_images: {msg}") from None
    finally:
        reader.dispose()


def read_vectors(conn: Connection, table: str, ids: Sequence[int], configs: Sequence[str], dim: int
                 ) -> dict[int, np.ndarray]:
    """The newest embedding of each asset under ``configs`` in ``table`` (a stage's result table), unit
    norm float32, read in pgvector's binary form (int16 dim, int16 unused, big-endian float32s)."""
    if not ids:
        return {}
    rows = conn.execute(text(
        f"SELECT DISTINCT ON (r.asset_id) r.asset_id, vector_send(r.embedding) FROM {table} r "
        "WHERE r.asset_id = ANY(:ids) AND r.config_id = ANY(:c) ORDER BY r.asset_id, r.created_at DESC"),
        {"ids": [int(a) for a in ids], "c": list(configs)}).all()
    out = {}
    for asset_id, blob in rows:
        v = np.frombuffer(bytes(blob), dtype=">f4", offset=4, count=dim).astype(np.float32)
        out[int(asset_id)] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def _thresholds(conn: Connection, picked: dict[int, list[int]], n_members: dict[int, int], configs: Sequence[str],
                dim: int, quantile: float) -> list[tuple[int, float, int, int]]:
    """The statistic (module docstring) of each cluster of ``picked`` (cluster -> sampled members)."""
    vectors = read_vectors(conn, "clip_results", [a for ids in picked.values() for a in ids], configs, dim)
    out = []
    for c, ids in sorted(picked.items()):
        got = [vectors[a] for a in ids if a in vectors]
        if len(got) < 2:
            continue
        x = np.stack(got)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        out.append((c, round(float(np.quantile(sims.max(axis=1), quantile)), 6), n_members[c], len(x)))
    return out


def _thresholds_task(database_url: str, picked: dict[int, list[int]], n_members: dict[int, int],
                     configs: list[str], dim: int, quantile: float) -> list[tuple[int, float, int, int]]:
    """One Ray task: the thresholds of a group of clusters, read on a connection of its own."""
    from curation.db import make_engine

    engine = make_engine(database_url, pool_size=1, application_name="curation-pairs")
    try:
        with engine.connect() as conn:
            return _thresholds(conn, picked, n_members, configs, dim, quantile)
    finally:
        engine.dispose()


def cluster_thresholds(conn: Connection, clustering_id: int, slice_ids: Sequence[int], clip: PairEmbedding,
                       *, quantile: float = THR_QUANTILE, sample: int = THR_SAMPLE, seed: int = 0,
                       block: int = THR_BLOCK, database_url: str | None = None, address: str | None = None
                       ) -> list[tuple[int, float, int, int]]:
    """(cluster, clip_thr, members in the slice, members sampled) of every cluster with at least two
    members in the slice (see the module docstring for the statistic). The clusters are read in groups of
    about ``block`` sampled embeddings; with ``database_url`` and more than one group, one Ray task per
    group (Ray joined at ``address`` or started locally), else here."""
    members = conn.execute(text("SELECT cluster_id, asset_id FROM asset_clusters WHERE clustering_id = :k "
                                "AND asset_id = ANY(:ids) ORDER BY cluster_id, asset_id"),
                           {"k": clustering_id, "ids": list(slice_ids)}).all()
    by_cluster: dict[int, list[int]] = {}
    for cluster, asset in members:
        by_cluster.setdefault(int(cluster), []).append(int(asset))
    rng = np.random.default_rng(seed)
    picked = {c: (sorted(rng.choice(ids, size=sample, replace=False).tolist()) if len(ids) > sample else ids)
              for c, ids in sorted(by_cluster.items()) if len(ids) >= 2}
    n_members = {c: len(ids) for c, ids in by_cluster.items()}
    groups: list[dict[int, list[int]]] = [{}]
    for c, ids in picked.items():
        if groups[-1] and sum(map(len, groups[-1].values())) + len(ids) > block:
            groups.append({})
        groups[-1][c] = ids
    groups = [g for g in groups if g]
    if len(groups) <= 1 or database_url is None:
        return [t for g in groups for t in _thresholds(conn, g, n_members, clip.configs, clip.dim, quantile)]
    import ray

    from workers.supervisor import ray_init

    ray_init(address)
    task = ray.remote(num_cpus=1)(_thresholds_task)
    refs = [task.remote(database_url, g, {c: n_members[c] for c in g}, list(clip.configs), clip.dim, quantile)
            for g in groups]
    return sorted(t for got in ray.get(refs) for t in got)


def submit_mining(engine: Engine, image_job: int, *, where: str | None = None, k: int = 16,
                  matcher: str | None = None, candidates: dict[str, Any] | None = None,
                  verify: dict[str, Any] | None = None, stages: Sequence[str] | None = None,
                  instruction: dict[str, Any] | None = None,
                  thr_quantile: float = THR_QUANTILE, thr_sample: int = THR_SAMPLE, thr_block: int = THR_BLOCK,
                  seed: int = 0, chunk_size: int = 256, max_attempts: int = 5, name: str | None = None,
                  address: str | None = None) -> MiningSubmission:
    """Record and enqueue a pair-mining job over ``image_job``'s slice (see the module docstring).
    ``candidates`` / ``verify``: more params of ``pair_candidates`` / ``pair_verify``; ``instruction``: the
    ``pair_instruction`` stage's params (captioner backend, model, prompt) — given, the job ends with it.
    Raises ``PairsError``."""
    from curation.jobs import UnknownJob, load_job
    from curation.planner import check_weights

    try:
        job = load_job(engine, image_job)
    except UnknownJob as exc:
        raise PairsError(str(exc)) from None
    if job.spec.modality != "image":
        raise PairsError(f"job {image_job} is a {job.spec.modality} job: pairs are mined from an image job")
    if not 0.0 <= thr_quantile <= 1.0 or thr_sample < 2:
        raise PairsError("--thr-quantile must be in [0, 1] and --thr-sample at least 2")
    where = where or DEFAULT_WHERE
    stage_names = list(stages) if stages is not None else pair_stages()
    if instruction is not None and INSTRUCTION_STAGE not in stage_names:
        stage_names.append(INSTRUCTION_STAGE)
    cand_params = {"k": k, **(candidates or {})}
    wanted = cand_params.get("embeddings", list(EMBEDDING_STAGES))
    with engine.connect() as conn:
        embeddings = [_embedding(conn, image_job, s) for s in wanted]
        clustering_id = conn.execute(text(
            "SELECT clustering_id FROM clusterings WHERE job_id = :j AND kind = 'image' AND embedding_stage = 'clip' "
            "AND finished_at IS NOT NULL ORDER BY clustering_id DESC LIMIT 1"), {"j": image_job}).scalar()
    picked = select_slice(engine, image_job, where)
    clip = next((e for e in embeddings if e.stage == "clip"), None)
    with engine.connect() as conn:
        if clip is not None:  # only images with a CLIP embedding are mined
            picked = list(conn.execute(text(
                "SELECT u.a FROM unnest(CAST(:ids AS bigint[])) AS u(a) WHERE EXISTS (SELECT 1 FROM clip_results r "
                "WHERE r.asset_id = u.a AND r.config_id = ANY(:c)) ORDER BY u.a"),
                {"ids": picked, "c": clip.configs}).scalars())
        if not picked:
            raise PairsError(f"no image of job {image_job} matches --where {where!r} and has a CLIP embedding")
        thresholds = (cluster_thresholds(conn, clustering_id, picked, clip, quantile=thr_quantile, sample=thr_sample,
                                         seed=seed, block=thr_block, address=address,
                                         database_url=engine.url.render_as_string(hide_password=False))
                      if clustering_id is not None and clip is not None else [])
        job_id = int(conn.execute(text("SELECT nextval(pg_get_serial_sequence('jobs', 'job_id'))")).scalar_one())
    dino = next((e for e in embeddings if e.stage == "dino"), None)
    verify_params = {**({"matcher": matcher} if matcher else {}), **(verify or {})}
    if dino is not None:  # the aligned crops are embedded by the model that embedded the images
        verify_params.setdefault("dino_model", dino.model)
    stage_params: dict[str, dict[str, Any]] = {"pair_candidates": {**cand_params, "mining_job": job_id},
                                               "pair_verify": verify_params, INSTRUCTION_STAGE: instruction or {}}
    try:
        spec = parse_spec({
            "name": name or f"pairs-of-{image_job}", "modality": "pair", "chunk_size": chunk_size,
            "max_attempts": max_attempts,
            "stages": [{"name": s, "params": stage_params.get(s, {})} for s in stage_names],
            "pairs": {"image_job": image_job, "where": where, "clustering_id": clustering_id,
                      "embeddings": [e.model_dump() for e in embeddings]},
        })
        if spec.stages[0].name != "pair_candidates":
            raise SpecError("stages[0]: a pair-mining job starts with pair_candidates")
        check_weights(spec)
    except SpecError as exc:
        raise PairsError(str(exc)) from None
    first = spec.stage_classes()[0]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (job_id, name, modality, spec, stages) "
                          "VALUES (:j, :n, 'pair', CAST(:s AS jsonb), :st)"),
                     {"j": job_id, "n": spec.name, "s": json.dumps(spec.model_dump(mode="json")),
                      "st": [s.name for s in spec.stages]})
        conn.execute(text("INSERT INTO job_stages (job_id, stage, position, params) VALUES (:j, :s, :i, CAST(:p AS jsonb))"),
                     [{"j": job_id, "s": st.name, "i": i, "p": json.dumps(spec.stage_params(i).model_dump(mode="json"))}
                      for i, st in enumerate(spec.stages)])
        for batch in chunked(picked, 10_000):
            conn.execute(text("INSERT INTO job_assets (job_id, asset_id) SELECT :j, unnest(CAST(:ids AS bigint[])) "
                              "ON CONFLICT DO NOTHING"), {"j": job_id, "ids": batch})
        if thresholds:
            conn.execute(text(
                "INSERT INTO pair_cluster_thresholds (job_id, clustering_id, cluster_id, clip_thr, n_members, n_sampled) "
                "SELECT :j, :k, unnest(CAST(:c AS integer[])), unnest(CAST(:t AS real[])), "
                "unnest(CAST(:n AS integer[])), unnest(CAST(:s AS integer[]))"),
                {"j": job_id, "k": clustering_id, "c": [t[0] for t in thresholds], "t": [t[1] for t in thresholds],
                 "n": [t[2] for t in thresholds], "s": [t[3] for t in thresholds]})
        chunks = [(f"c{i}", ids) for i, ids in enumerate(chunked(picked, spec.chunk_size))]
        n_tasks = enqueue(conn, job_id=job_id, stage=spec.stages[0].name, stage_version=first.stage_version(),
                          chunks=chunks, max_attempts=spec.max_attempts, max_runtime_s=first.max_runtime_s)
    return MiningSubmission(job_id, image_job, len(picked), n_tasks, clustering_id, len(thresholds))


# --- re-tuning Table 1 -------------------------------------------------------------------------------


def rules(engine: Engine, job_id: int) -> dict[str, float]:
    """The Table 1 thresholds ``curated_pairs`` applies to a mining job's pairs."""
    from workers.pair_candidates import TABLE1

    with engine.connect() as conn:
        params = conn.execute(text("SELECT params FROM job_stages WHERE job_id = :j AND stage = 'pair_candidates'"),
                              {"j": job_id}).scalar()
    if params is None:
        raise PairsError(f"job {job_id} is not a pair-mining job (`curation status` lists the jobs)")
    return {key: params.get(key, default) for key, default in TABLE1.items()}


def set_rules(engine: Engine, job_id: int, updates: dict[str, float]) -> dict[str, float]:
    """Change Table 1 thresholds of a mining job: nothing is recomputed, ``curated_pairs`` reads them."""
    from workers.pair_candidates import TABLE1, PairCandidatesParams

    unknown = sorted(set(updates) - set(TABLE1))
    if unknown:
        raise PairsError(f"not a Table 1 threshold: {', '.join(unknown)} (one of {', '.join(TABLE1)})")
    merged = {**rules(engine, job_id), **updates}
    try:
        PairCandidatesParams.model_validate(merged)
    except ValueError as exc:
        raise PairsError(str(exc)) from None
    with engine.begin() as conn:
        conn.execute(text("UPDATE job_stages SET params = params || CAST(:p AS jsonb) "
                          "WHERE job_id = :j AND stage = 'pair_candidates'"),
                     {"j": job_id, "p": json.dumps(updates)})
    return merged


# --- what the runtime runs for the pair stages ----------------------------------------------------------


def knn_query(emb: PairEmbedding):
    """The kNN statement of one index for a batch of images (``:ids``) in a job's slice (``:job``): an HNSW
    index scan per image (the same expression and partial-index predicate as ``curation.embeddings``),
    filtered to the slice; run under ``hnsw.iterative_scan`` so that the filter still yields ``:k``."""
    from workers.stage import get_stage

    table = get_stage(emb.stage).result_table
    dim = int(emb.dim)  # literal text like DDL: the model matched ^[a-z0-9-]+$ (PairEmbedding), dim is an int
    return text(
        f"""
        SELECT q.asset_id AS query, n.asset_id AS neighbour
        FROM (SELECT DISTINCT ON (r.asset_id) r.asset_id, r.embedding FROM {table} r
              WHERE r.asset_id = ANY(:ids) AND r.config_id = ANY(:c) ORDER BY r.asset_id, r.created_at DESC) q
        CROSS JOIN LATERAL (
            SELECT r.asset_id FROM {table} r
            WHERE r.model = '{emb.model}' AND r.config_id = ANY(:c) AND r.asset_id <> q.asset_id
              AND EXISTS (SELECT 1 FROM job_assets ja WHERE ja.job_id = :job AND ja.asset_id = r.asset_id)
            ORDER BY r.embedding::vector({dim}) <=> q.embedding::vector({dim})
            LIMIT :k) n
        """)


def _knn(conn: Connection, emb: PairEmbedding, job_id: int, ids: Sequence[int], k: int) -> dict[int, list[int]]:
    """Each image's ``k`` nearest neighbours in the job's slice by ``emb`` (``knn_query``)."""
    rows = conn.execute(knn_query(emb), {"ids": [int(a) for a in ids], "c": emb.configs, "job": job_id,
                                         "k": k}).all()
    out: dict[int, list[int]] = {}
    for query, neighbour in rows:
        got = out.setdefault(int(query), [])
        if neighbour not in got:
            got.append(int(neighbour))
    return out


def _member_results(conn: Connection, image_job: int, names: Sequence[str], ids: Sequence[int]
                    ) -> dict[str, dict[int, Any] | None]:
    """The image job's results of stages ``names`` for ``ids``; None for a stage the job did not run."""
    from workers.runtime import job_config_ids, load_results
    from workers.stage import get_stage

    out: dict[str, dict[int, Any] | None] = {}
    for name in names:
        configs = job_config_ids(conn, image_job, name)
        out[name] = load_results(conn, get_stage(name), list(ids), configs) if configs else None
    return out


def neighbourhoods(conn: Connection, mining: PairsSpec, job_id: int, params: Any, ids: Sequence[int],
                   member_requires: Sequence[str]) -> dict[int, Any]:
    """Each image's ``Neighbourhood`` (``workers.stage``): its CLIP and DINOv2 kNN within the mining job's
    slice, both similarities for every neighbour, clusters and their adaptive thresholds, and the
    ``member_requires`` results of the image and its neighbours in the image job."""
    from workers.stage import ItemFailure, Neighbour, Neighbourhood

    embeddings = [e for e in mining.embeddings if e.stage in params.embeddings]
    conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(params.ef_search), int(params.k))}"))
    conn.execute(text(f"SET LOCAL hnsw.max_scan_tuples = {int(params.max_scan_tuples)}"))
    found = {e.stage: _knn(conn, e, job_id, ids, int(params.k)) for e in embeddings}
    everyone = sorted({int(a) for a in ids} | {n for by in found.values() for ns in by.values() for n in ns})
    vectors = {e.stage: read_vectors(conn, get_table(e.stage), everyone, e.configs, e.dim) for e in embeddings}
    cluster: dict[int, int] = {}
    thr: dict[int, float] = {}
    if mining.clustering_id is not None:
        cluster = dict(conn.execute(text("SELECT asset_id, cluster_id FROM asset_clusters WHERE clustering_id = :k "
                                         "AND asset_id = ANY(:ids)"), {"k": mining.clustering_id, "ids": everyone}).all())
        thr = dict(conn.execute(text("SELECT cluster_id, clip_thr FROM pair_cluster_thresholds WHERE job_id = :j "
                                     "AND cluster_id = ANY(:c)"), {"j": job_id, "c": sorted(set(cluster.values()))}).all())
    results = _member_results(conn, mining.image_job, member_requires, everyone)

    def prior(asset_id: int) -> dict[str, Any]:
        return {name: got[asset_id] for name, got in results.items() if got is not None and asset_id in got}

    def sim(stage: str, a: int, b: int) -> float | None:
        va, vb = vectors.get(stage, {}).get(a), vectors.get(stage, {}).get(b)
        return None if va is None or vb is None else float(np.dot(va, vb))

    out: dict[int, Any] = {}
    for a in ids:
        if not any(a in vectors[e.stage] for e in embeddings):
            out[a] = ItemFailure("missing_embedding", f"asset {a}: no {' or '.join(e.stage for e in embeddings)} "
                                                      f"embedding in image job {mining.image_job}")
            continue
        by = {stage: set(found[stage].get(a, [])) for stage in found}
        neighbours = []
        for n in dict.fromkeys(x for stage in found for x in found[stage].get(a, [])):
            hits = [stage for stage in found if n in by[stage]]
            c = cluster.get(n)
            neighbours.append(Neighbour(n, sim("clip", a, n), sim("dino", a, n),
                                        "both" if len(hits) > 1 else hits[0], c, thr.get(c), prior(n)))
        neighbours.sort(key=lambda x: -max(s for s in (x.clip_sim, x.dino_sim, -2.0) if s is not None))
        c = cluster.get(a)
        out[a] = Neighbourhood(c, thr.get(c), prior(a), tuple(neighbours))
    return out


def get_table(stage: str) -> str:
    from workers.stage import get_stage

    return get_stage(stage).result_table


_INSERT_PAIR_ASSETS = text(
    """
    INSERT INTO assets (uri, kind, source_id, parent_id)
    SELECT 'pair:' || u.s || ':' || u.t, 'pair', a.source_id, u.s
    FROM unnest(CAST(:s AS bigint[]), CAST(:t AS bigint[])) WITH ORDINALITY AS u(s, t, ord)
    JOIN assets a ON a.asset_id = u.s
    ORDER BY u.ord
    ON CONFLICT (uri, coalesce(start_frame, -1), coalesce(end_frame, -1)) DO NOTHING
    """
)

_INSERT_IMAGE_PAIRS = text(
    """
    INSERT INTO image_pairs (asset_id, config_id, job_id, source_asset_id, target_asset_id, found_by, clip_sim,
                             dino_sim, clip_thr, cluster_id, face_sim)
    SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:cs AS text[]), CAST(:js AS bigint[]), CAST(:s AS bigint[]),
                         CAST(:t AS bigint[]), CAST(:by AS text[]), CAST(:clip AS real[]), CAST(:dino AS real[]),
                         CAST(:thr AS real[]), CAST(:cl AS integer[]), CAST(:face AS real[]))
    ON CONFLICT DO NOTHING
    RETURNING asset_id
    """
)


def insert_pairs(conn: Connection, job_id: int, config_id: str, pairs: Sequence[Any]) -> list[int]:
    """Store ``pairs`` (``CandidatePair``, source < target, in one order for every task so that concurrent
    tasks lock alike) as assets of kind ``pair`` (uri ``pair:<source>:<target>``, parent = source; shared
    by every job and configuration that finds the pair) in the job, with their ``image_pairs`` rows under
    ``config_id``. Returns the pairs whose row this transaction wrote, in order: those go on to the next
    stage (a pair another task of the job stored already was handed on by that task)."""
    uris = [f"pair:{p.source}:{p.target}" for p in pairs]
    conn.execute(_INSERT_PAIR_ASSETS, {"s": [p.source for p in pairs], "t": [p.target for p in pairs]})
    # a new statement: it sees the pairs a concurrent task committed while this one waited on them
    ids = dict(conn.execute(text("SELECT uri, asset_id FROM assets WHERE uri = ANY(:u) AND kind = 'pair'"),
                            {"u": uris}).all())
    pair_ids = [ids[u] for u in uris]
    conn.execute(text("INSERT INTO job_assets (job_id, asset_id) SELECT :j, unnest(CAST(:ids AS bigint[])) "
                      "ON CONFLICT DO NOTHING"), {"j": job_id, "ids": pair_ids})
    written = set(conn.execute(_INSERT_IMAGE_PAIRS, {
        "ids": pair_ids, "cs": [config_id] * len(pairs), "js": [job_id] * len(pairs),
        "s": [p.source for p in pairs], "t": [p.target for p in pairs], "by": [p.found_by for p in pairs],
        "clip": [p.clip_sim for p in pairs], "dino": [p.dino_sim for p in pairs], "thr": [p.clip_thr for p in pairs],
        "cl": [p.cluster_id for p in pairs], "face": [p.face_sim for p in pairs],
    }).scalars())
    return [a for a in pair_ids if a in written]


def pair_members(conn: Connection, mining: PairsSpec, pair_ids: Sequence[int], member_requires: Sequence[str]
                 ) -> dict[int, Any]:
    """Each pair's ``PairMembers`` (asset ids, URIs, the image job's ``member_requires`` results; pixels
    come with the runtime's fetch), or an ItemFailure naming what is missing."""
    from workers.stage import ItemFailure, PairMembers, StageItem

    rows = conn.execute(text(
        "SELECT DISTINCT ON (p.asset_id) p.asset_id, p.source_asset_id, s.uri AS source_uri, p.target_asset_id, "
        "t.uri AS target_uri FROM image_pairs p JOIN assets s ON s.asset_id = p.source_asset_id "
        "JOIN assets t ON t.asset_id = p.target_asset_id WHERE p.asset_id = ANY(:ids) "
        "ORDER BY p.asset_id, p.created_at DESC"), {"ids": [int(a) for a in pair_ids]}).all()
    members = sorted({r.source_asset_id for r in rows} | {r.target_asset_id for r in rows})
    results = _member_results(conn, mining.image_job, member_requires, members)
    by_pair = {r.asset_id: r for r in rows}
    out: dict[int, Any] = {}
    for pair in pair_ids:
        r = by_pair.get(pair)
        if r is None:
            out[pair] = ItemFailure("missing_pair", f"asset {pair} is not a mined pair (no image_pairs row)")
            continue
        items = []
        for role, asset_id, uri in (("source", r.source_asset_id, r.source_uri), ("target", r.target_asset_id,
                                                                                   r.target_uri)):
            missing = [n for n, got in results.items() if got is None or asset_id not in got]
            if missing:
                out[pair] = ItemFailure("missing_prior", f"pair {pair}: {role} asset {asset_id} has no "
                                                         f"{', '.join(missing)} result in image job {mining.image_job}")
                break
            items.append(StageItem(asset_id=asset_id, uri=uri, prior={n: got[asset_id] for n, got in results.items()}))
        else:
            out[pair] = PairMembers(items[0], items[1])
    return out
