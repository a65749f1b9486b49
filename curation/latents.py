"""The platform's encode step: a slice of ``curated_images`` (FLUX.1 VAE) or ``curated_scenes``
(HunyuanVideo VAE) → VAE latents in tar shards (via ``training.encode``) → every shard and latent
recorded in the database (``shards``, ``latents``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from curation.user_sql import check_predicate, reader_engine

from training.encode import ImageRecord, SceneRecord, encode_images, encode_scenes
from training.shards import ShardInfo, VaeInfo


@dataclass
class EncodeResult:
    shards: list[ShardInfo]
    n_latents: int


VIEWS = {
    # one row per asset even where several jobs hold it (a view row is one (job, asset))
    "curated_images": "SELECT DISTINCT ON (c.asset_id) c.asset_id, c.uri, c.source FROM curated_images c "
                      "WHERE ({predicate}) AND c.decoded",
    "curated_scenes": "SELECT DISTINCT ON (c.asset_id) c.asset_id, c.uri, c.source, c.start_s, c.end_s "
                      "FROM curated_scenes c WHERE ({predicate})",
}


def encode_slice(engine: Engine, *, predicate: str, output: str, tier: str, vae, vae_info: VaeInfo,
                 job_id: int | None = None, limit: int | None = None, view: str = "curated_images",
                 max_seconds: float = 5.0, samples_per_tar: dict[str, int] | None = None) -> EncodeResult:
    """Encode the rows of ``view`` matching ``predicate`` (checked, and run as the read-only role): images
    with an image VAE, scenes (their first ``max_seconds`` at 24 fps) with a video VAE. Raises
    ``UnsafeSQL`` (a ValueError) for a predicate that is not one expression."""
    check_predicate(predicate, what="the encode predicate")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, not {view!r}")
    scope = " AND c.job_id = :job" if job_id is not None else ""
    sql = VIEWS[view].format(predicate=predicate) + scope + " ORDER BY c.asset_id" + (" LIMIT :limit" if limit else "")
    reader = reader_engine(engine, timeout_s=3600.0)
    try:
        with reader.connect() as conn:
            rows = conn.execute(text(sql), {"job": job_id, "limit": limit}).all()
    finally:
        reader.dispose()
    if view == "curated_scenes":
        scenes = [SceneRecord(f"a{r.asset_id}", r.uri, r.start_s, r.end_s, {"asset_id": r.asset_id, "source": r.source})
                  for r in rows]
        shards = encode_scenes(scenes, vae, vae_info, tier=tier, output=output, max_seconds=max_seconds,
                               samples_per_tar=samples_per_tar)
    else:
        records = [ImageRecord(f"a{r.asset_id}", r.uri, {"asset_id": r.asset_id, "source": r.source}) for r in rows]
        shards = encode_images(records, vae, vae_info, tier=tier, output=output, samples_per_tar=samples_per_tar)
    with engine.begin() as conn:
        for s in shards:
            shard_id = conn.execute(
                text(
                    "INSERT INTO shards (uri, modality, tier, bucket_height, bucket_width, n_samples, bytes, vae, "
                    "scaling_factor, shift_factor) VALUES (:u, :m, :t, :h, :w, :n, :b, :v, :sf, :sh) "
                    "ON CONFLICT (uri) DO UPDATE SET n_samples = excluded.n_samples, bytes = excluded.bytes "
                    "RETURNING shard_id"
                ),
                {"u": s.uri, "m": s.modality, "t": s.tier, "h": s.bucket[0], "w": s.bucket[1], "n": len(s.keys),
                 "b": s.nbytes, "v": vae_info.name, "sf": vae_info.scaling_factor, "sh": vae_info.shift_factor},
            ).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO latents (asset_id, shard_id, member, shape, vae) "
                    "SELECT CAST(substr(k, 2) AS bigint), :sid, k || '.latent.npy', CAST(sh AS integer[]), :v "
                    "FROM unnest(CAST(:keys AS text[]), CAST(:shapes AS text[])) AS u(k, sh) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"sid": shard_id, "v": vae_info.name, "keys": list(s.keys),
                 "shapes": ["{" + ",".join(str(d) for d in shape) + "}" for shape in s.shapes]},
            )
    return EncodeResult(shards, sum(len(s.keys) for s in shards))
