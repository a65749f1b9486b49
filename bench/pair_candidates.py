"""Candidate neighbours of pair mining (``curation.pairs.neighbourhoods``, report §4.3): the runtime's kNN for
a task of images — one HNSW index scan per image and embedding, filtered to the mining job's slice with
pgvector's iterative scans — against the exact kNN on the same PostgreSQL (the same statement with index
scans off: a sequential scan and a sort per image) and faiss ``IndexFlatIP`` on the same vectors in memory.

``--n`` random unit vectors (PostgreSQL's ``random()`` under ``setseed``; an ANN benchmark's usual data: the
index does not know what the vectors show) are stored as one image job's CLIP (512-d) and DINOv2 (384-d)
embeddings in an embedded PostgreSQL of its own; the mining job's slice is every other image, so the
filter drops half of what the index walks. Timed: ``neighbourhoods`` for ``--tasks`` tasks of ``--batch``
images (k = 16 by each embedding, both cosines for every neighbour), per image; recall@k of the HNSW
neighbours against the exact ones.

    python bench/pair_candidates.py [--n 100000] [--batch 64] [--tasks 4] [--k 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIMS = {"clip": 512, "dino": 384}


def _load(engine, n: int) -> tuple[int, int]:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("SELECT setseed(0.42)"))
        conn.execute(text("INSERT INTO sources (name, uri) VALUES ('bench', '/bench')"))
        image_job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('bench', 'image', "
                                      "'{}', ARRAY['clip', 'dino']) RETURNING job_id")).scalar_one()
        mining = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('mine', 'pair', '{}', "
                                   "ARRAY['pair_candidates']) RETURNING job_id")).scalar_one()
        conn.execute(text("INSERT INTO assets (uri, kind, source_id) SELECT '/bench/' || g || '.jpg', 'image', 1 "
                          "FROM generate_series(1, :n) g"), {"n": n})
        conn.execute(text("INSERT INTO job_assets (job_id, asset_id) SELECT :j, asset_id FROM assets"), {"j": image_job})
        conn.execute(text("INSERT INTO job_assets (job_id, asset_id) SELECT :j, asset_id FROM assets "
                          "WHERE asset_id % 2 = 0"), {"j": mining})  # the slice: every other image
        for stage in DIMS:
            conn.execute(text("INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
                              "VALUES (:c, :s, :s || '@1', '{}', '{}')"), {"c": f"bench-{stage}", "s": stage})
            conn.execute(text("INSERT INTO job_configs VALUES (:j, :s, :c)"), {"j": image_job, "s": stage,
                                                                             "c": f"bench-{stage}"})
        vec = "(SELECT CAST(array_agg(random() - 0.5) AS real[])::vector FROM generate_series(1, :d + 0 * a.asset_id))"
        conn.execute(text(
            "INSERT INTO clip_results (asset_id, config_id, stage_version, embedding, location, location_p, style, "
            "style_p, main_subject, main_subject_p, place_type, place_type_p, model, weights_sha256, taxonomy_sha256) "
            f"SELECT a.asset_id, 'bench-clip', 'clip@1', {vec}, 'x', 1, 'x', 1, 'x', 1, 'x', 1, 'bench-clip', 's', 't' "
            "FROM assets a"), {"d": DIMS["clip"]})
        conn.execute(text(
            "INSERT INTO dino_results (asset_id, config_id, stage_version, embedding, model, weights_sha256) "
            f"SELECT a.asset_id, 'bench-dino', 'dino@1', {vec}, 'bench-dino', 's' FROM assets a"), {"d": DIMS["dino"]})
    return image_job, mining


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--ef", type=str, default="100,400", help="hnsw.ef_search values to time (comma-separated)")
    args = ap.parse_args()

    import faiss
    from sqlalchemy import text

    from curation.db import make_engine, upgrade
    from curation.embedded import EmbeddedPostgres
    from curation.embeddings import ensure_hnsw_index
    from curation.pairs import neighbourhoods, read_vectors
    from curation.spec import PairEmbedding, PairsSpec
    from workers.pair_candidates import PairCandidatesParams

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            engine = make_engine(server.url, pool_size=2)
            upgrade(engine)
            started = time.perf_counter()
            image_job, mining = _load(engine, args.n)
            loaded = time.perf_counter() - started
            started = time.perf_counter()
            for stage in DIMS:
                ensure_hnsw_index(engine, f"bench-{stage}", f"{stage}_results")
            indexed = time.perf_counter() - started
            print(f"stored {args.n} CLIP (512-d) + DINOv2 (384-d) random embeddings in {loaded:.1f} s, "
                  f"HNSW indexes built in {indexed:.1f} s")
            spec = PairsSpec(image_job=image_job, embeddings=[
                PairEmbedding(stage=s, model=f"bench-{s}", dim=d, configs=[f"bench-{s}"]) for s, d in DIMS.items()])
            rng = np.random.default_rng(0)
            tasks = [sorted(rng.choice(np.arange(2, args.n + 1, 2), size=args.batch, replace=False).tolist())
                     for _ in range(args.tasks)]

            def run(ef: int, exact: bool) -> tuple[float, dict[int, set[int]]]:
                params = PairCandidatesParams(k=args.k, ef_search=ef)
                found: dict[int, set[int]] = {}
                started = time.perf_counter()
                for ids in tasks:
                    with engine.begin() as conn:
                        if exact:
                            conn.execute(text("SET LOCAL enable_indexscan = off"))
                        for a, hood in neighbourhoods(conn, spec, mining, params, ids, ()).items():
                            found[a] = {n.asset_id for n in hood.neighbours}
                return time.perf_counter() - started, found

            n_images = args.batch * args.tasks
            exact_s, exact = run(100, True)
            print(f"n={args.n} (slice {args.n // 2}), {args.tasks} tasks x {args.batch} images, k={args.k} by CLIP "
                  f"and by DINOv2")
            print(f"exact in PostgreSQL (index scans off): {1e3 * exact_s / n_images:.2f} ms/image")
            for ef in (int(x) for x in args.ef.split(",")):
                run(ef, False)  # warm the caches
                hnsw_s, hnsw = run(ef, False)
                recall = np.mean([len(hnsw[a] & exact[a]) / max(1, len(exact[a])) for a in exact])
                print(f"ours (HNSW ef_search={ef}, iterative scans, filtered to the slice): "
                      f"{1e3 * hnsw_s / n_images:.2f} ms/image, {exact_s / hnsw_s:.1f}x the exact scan, "
                      f"recall@{args.k} {recall:.3f}")

            # faiss in memory, exact inner product over the slice, the same queries (both embeddings)
            with engine.connect() as conn:
                slice_ids = list(range(2, args.n + 1, 2))
                started = time.perf_counter()
                mats = {s: read_vectors(conn, f"{s}_results", slice_ids, [f"bench-{s}"], d) for s, d in DIMS.items()}
                read_s = time.perf_counter() - started
            started = time.perf_counter()
            for s, d in DIMS.items():
                index = faiss.IndexFlatIP(d)
                index.add(np.stack([mats[s][a] for a in slice_ids]))
                queries = np.stack([mats[s][a] for ids in tasks for a in ids])
                index.search(queries, args.k + 1)
            faiss_s = time.perf_counter() - started
            print(f"faiss IndexFlatIP in memory ({faiss.omp_get_max_threads()} threads, exact): "
                  f"{1e3 * faiss_s / n_images:.2f} ms/image (+ {read_s:.1f} s to read the slice's vectors once)")
        finally:
            server.stop("immediate")


if __name__ == "__main__":
    main()
