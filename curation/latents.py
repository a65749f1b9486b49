"""The platform's encode step: a slice of ``curated_images`` (FLUX.1 VAE), ``curated_scenes``
(HunyuanVideo VAE) or ``curated_pairs`` (instruct-editing samples, FLUX.1 VAE) → VAE latents in tar shards (via ``training.encode``) → every shard and latent
recorded in the database (``shards``, ``latents``). Each sample's JSON carries its captions: the caption
stages' columns of the view and the source list's ``source_caption`` (``sample_meta``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from curation.balance import Balance, balance_params, balanced_sql, check_balance
from curation.export import ROW_ID
from curation.user_sql import check_predicate, reader_engine

from training.encode import EditPair, ImageRecord, SceneRecord, encode_edit_pairs, encode_images, encode_scenes
from training.shards import ShardInfo, VaeInfo


@dataclass
class EncodeResult:
    shards: list[ShardInfo]
    n_latents: int


class UncaptionedSamples(ValueError):
    """Samples of the slice have no caption, and uncaptioned samples were not allowed."""


VIEWS = {
    # one row per asset even where several jobs hold it (a view row is one (job, asset)): the newest job's
    "curated_images": "SELECT DISTINCT ON (c.asset_id) c.* FROM curated_images c WHERE ({predicate}) AND c.decoded",
    "curated_scenes": "SELECT DISTINCT ON (c.asset_id) c.* FROM curated_scenes c WHERE ({predicate})",
    # editing pairs (report §4.3 → §6.3): one row per pair, the newest mining job's
    "curated_pairs": "SELECT DISTINCT ON (c.pair_id) c.* FROM curated_pairs c WHERE ({predicate})",
}
DEFAULT_WHERE = {"curated_images": "is_unique AND bucket IS NOT NULL",
                 "curated_scenes": "is_unique AND bucket IS NOT NULL", "curated_pairs": "is_kept"}
# view columns that describe a caption rather than hold one
_NOT_CAPTION_TEXT = ("_version", "_raw", "_model", "_prompt_version", "_tokens", "_language", "_lang", "_flag")


def caption_fields(row: dict) -> dict[str, str]:
    """Every caption a view row holds, keyed by column: ``caption`` and ``caption_*`` (the caption stages'
    text columns; a jsonb one is flattened to ``column.key``), and ``source_caption`` (the source list's).
    Empty texts are left out."""
    out: dict[str, str] = {}

    def add(name: str, value) -> None:
        if isinstance(value, str) and value.strip():
            out[name] = value.strip()
        elif isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}.{key}", inner)

    for name, value in row.items():
        if (name in ("caption", "source_caption") or name.startswith("caption_")) and not name.endswith(_NOT_CAPTION_TEXT):
            add(name, value)
    return out


def main_caption(captions: dict[str, str]) -> str | None:
    """The sample's ``caption``: the captioner's (``caption``, ``caption_en``, else another caption
    column), else the source list's."""
    for name in ("caption", "caption_en"):
        if name in captions:
            return captions[name]
    machine = [v for k, v in captions.items() if not k.startswith("source_caption")]
    return machine[0] if machine else captions.get("source_caption")


def sample_meta(row: dict) -> dict:
    """What a sample's JSON carries about its asset: id, source, ``caption`` and every ``captions`` variant."""
    captions = caption_fields(row)
    return {"asset_id": row["asset_id"], "source": row["source"], "caption": main_caption(captions),
            "captions": captions}


def encode_slice(engine: Engine, *, predicate: str, output: str, tier: str, vae, vae_info: VaeInfo,
                 job_id: int | None = None, limit: int | None = None, view: str = "curated_images",
                 max_seconds: float = 5.0, samples_per_tar: dict[str, int] | None = None,
                 balance: Balance | None = None, allow_uncaptioned: bool = False) -> EncodeResult:
    """Encode the rows of ``view`` matching ``predicate`` (checked, and run as the read-only role): images
    with an image VAE, scenes (their first ``max_seconds`` at 24 fps) with a video VAE. Each sample's JSON
    carries the row's captions (``sample_meta``); a row without any is refused (``UncaptionedSamples``,
    before anything is encoded) unless ``allow_uncaptioned``. ``balance`` keeps at most so many rows per
    value of a view column (``curation.balance``). Raises ``UnsafeSQL`` (a ValueError) for a predicate
    that is not one expression."""
    check_predicate(predicate, what="the encode predicate")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, not {view!r}")
    scope = " AND c.job_id = :job" if job_id is not None else ""
    row_id = ROW_ID[view]
    sql = balanced_sql(VIEWS[view].format(predicate=predicate) + scope + f" ORDER BY c.{row_id}, c.job_id DESC",
                       balance, order_by=row_id) + (" LIMIT :limit" if limit else "")
    reader = reader_engine(engine, timeout_s=3600.0)
    try:
        with reader.connect() as conn:
            if balance is not None:
                check_balance(conn, view, balance)
            rows = [dict(r) for r in conn.execute(text(sql), {"job": job_id, "limit": limit,
                                                              **balance_params(balance)}).mappings()]
    finally:
        reader.dispose()
    if view == "curated_pairs":
        return _record(engine, encode_pairs(rows, vae, vae_info, tier=tier, output=output,
                                            samples_per_tar=samples_per_tar, allow_uncaptioned=allow_uncaptioned),
                       vae_info)
    metas = [sample_meta(r) for r in rows]
    bare = [m["asset_id"] for m in metas if not m["caption"]]
    if bare and not allow_uncaptioned:
        raise UncaptionedSamples(
            f"{len(bare)} of {len(rows)} samples have no caption (assets {', '.join(map(str, bare[:10]))}"
            f"{', …' if len(bare) > 10 else ''}): run the caption stage, give the source list a caption column, "
            "narrow --where to captioned rows, or pass --allow-uncaptioned")
    if view == "curated_scenes":
        scenes = [SceneRecord(f"a{r['asset_id']}", r["uri"], r["start_s"], r["end_s"], m) for r, m in zip(rows, metas)]
        shards = encode_scenes(scenes, vae, vae_info, tier=tier, output=output, max_seconds=max_seconds,
                               samples_per_tar=samples_per_tar)
    else:
        records = [ImageRecord(f"a{r['asset_id']}", r["uri"], m) for r, m in zip(rows, metas)]
        shards = encode_images(records, vae, vae_info, tier=tier, output=output, samples_per_tar=samples_per_tar)
    return _record(engine, shards, vae_info)


def encode_pairs(rows: list[dict], vae, vae_info: VaeInfo, *, tier: str, output: str,
                 samples_per_tar: dict[str, int] | None = None, allow_uncaptioned: bool = False) -> list[ShardInfo]:
    """``curated_pairs`` rows → instruct-editing samples (``training.encode.encode_edit_pairs``: the target's
    latent, the source's as ``reference``, the instruction as the caption), keyed ``p<pair_id>``. A pair
    with no instruction (the mining job ran no ``pair_instruction``) is refused before anything is encoded,
    unless ``allow_uncaptioned``."""
    bare = [r["pair_id"] for r in rows if not (r.get("instruction") or "").strip()]
    if bare and not allow_uncaptioned:
        raise UncaptionedSamples(
            f"{len(bare)} of {len(rows)} pairs have no instruction (pairs {', '.join(map(str, bare[:10]))}"
            f"{', …' if len(bare) > 10 else ''}): mine with `curation pairs mine --instructions MODEL`, narrow "
            "--where to `instruction IS NOT NULL`, or pass --allow-uncaptioned")
    pairs = [EditPair(f"p{r['pair_id']}", r["source_uri"], r["target_uri"], (r.get("instruction") or "").strip(),
                      {"pair_id": r["pair_id"], "job_id": r["job_id"], "source_asset_id": r["source_asset_id"],
                       "target_asset_id": r["target_asset_id"], "admitted_by": r.get("admitted_by"),
                       "instruction_model": r.get("instruction_model")})
             for r in rows]
    return encode_edit_pairs(pairs, vae, vae_info, tier=tier, output=output, samples_per_tar=samples_per_tar)


def _record(engine: Engine, shards: list[ShardInfo], vae_info: VaeInfo) -> EncodeResult:
    """Record the shards and each latent (``latents.asset_id``: the image, scene or pair asset)."""
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
