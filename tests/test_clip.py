"""CLIP on real photos and real clips with the tiny random-weight variant of the real open_clip
architecture: columns, types and ranges, provenance, embeddings in pgvector with a per-model HNSW
index, similarity search, and the guards (absent weights refuse the job; the tiny model cannot run in a
real job)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from curation.spec import SpecError, parse_spec
from models.clip import TINY, load_clip, load_taxonomies
from tests.helpers import spy_on_frames
from tests.missing import unavailable
from workers.clip import TAXONOMIES, ClipParams, ClipStage
from workers.stage import Span, StageItem

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "coins.png")


def _photos(skimage_dir):
    return [Image.open(skimage_dir / n).convert("RGB") for n in PHOTOS]


def test_tiny_clip_scores_real_photos(skimage_dir):
    stage = ClipStage(ClipParams(model=TINY))
    stage.setup()
    items = [StageItem(i, n, image=img) for i, (n, img) in enumerate(zip(PHOTOS, _photos(skimage_dir)))]
    results = stage.process(items)
    clip = stage._clip
    taxonomies = {t.name: t.labels for t in stage._taxonomies}
    assert set(taxonomies) == set(TAXONOMIES)
    for r in results:
        assert r.embedding.shape == (clip.dim,) == (32,)
        assert np.linalg.norm(r.embedding) == pytest.approx(1.0, abs=1e-5)
        for name in TAXONOMIES:
            assert getattr(r, name) in taxonomies[name]
            assert 1.0 / len(taxonomies[name]) - 1e-6 <= getattr(r, f"{name}_p") <= 1.0
        assert r.model == TINY and r.weights_sha256 == "tiny-random" and len(r.taxonomy_sha256) == 64
    # the same photo twice gives the same embedding; different photos differ
    again = stage.process(items[:1])[0]
    assert np.allclose(again.embedding, results[0].embedding, atol=1e-6)
    assert not np.allclose(results[0].embedding, results[1].embedding, atol=1e-3)


def test_the_tiny_model_never_runs_in_a_real_job(monkeypatch, photo_dir):
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS", raising=False)
    from models.registry import MissingWeights

    with pytest.raises(MissingWeights, match="random-weight test model"):
        load_clip(TINY)
    with pytest.raises(SpecError, match="random-weight test model"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                    "stages": [{"name": "probe"}, {"name": "clip", "params": {"model": TINY}}]})


def test_a_job_needing_absent_clip_weights_is_refused_with_the_pull_command(engine, photo_dir):
    from curation.planner import submit

    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": str(photo_dir)},
                       "stages": [{"name": "probe"}, {"name": "clip"}]})
    with pytest.raises(SpecError) as info:
        submit(engine, spec)
    assert "stages[1] (clip): weights of model 'clip-vit-b-32' not present" in str(info.value)
    assert "curation models pull clip-vit-b-32" in str(info.value)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_embeddings_land_in_pgvector_with_an_hnsw_index_and_search_finds_the_photo(engine, db_url, photo_dir):
    from curation.embeddings import index_name, similar
    from curation.planner import submit
    from workers.runtime import StageWorker

    job = submit(engine, parse_spec({
        "name": "clip", "modality": "image", "source": {"uri": str(photo_dir)}, "chunk_size": 8,
        "stages": [{"name": "probe"}, {"name": "clip", "params": {"model": TINY}}],
    })).job_id
    for stage in ("probe", "clip"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        n = conn.execute(text("SELECT count(*) FROM clip_results WHERE model=:m"), {"m": TINY}).scalar_one()
        probed = conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one()
        assert n == probed > 5
        dims = conn.execute(text("SELECT DISTINCT vector_dims(embedding) FROM clip_results")).scalars().all()
        assert dims == [32]
        idx = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname=:n"),
                           {"n": index_name(TINY, 32)}).scalar_one()
        assert "hnsw" in idx and "vector_cosine_ops" in idx and "vector(32)" in idx
        row = conn.execute(text("SELECT c.asset_id, c.location, c.style, c.main_subject, c.place_type, "
                                "c.location_p FROM curated_images c WHERE c.uri LIKE '%astronaut.png'")).one()
        assert row.location and row.style and row.main_subject and row.place_type and 0 < row.location_p <= 1
    with engine.begin() as conn:  # a handful of rows: make the planner show that the index is usable
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(conn.execute(text(
            "EXPLAIN SELECT asset_id FROM clip_results WHERE model = 'clip-tiny-random' "
            "ORDER BY embedding::vector(32) <=> (SELECT embedding::vector(32) FROM clip_results LIMIT 1) "
            "LIMIT 5")).scalars())
    assert index_name(TINY, 32) in plan
    with engine.begin() as conn:
        hits = similar(conn, row.asset_id, k=3)
    assert hits[0].asset_id == row.asset_id and hits[0].cosine == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and hits[1].cosine <= hits[0].cosine


def test_video_clip_embeds_five_evenly_spaced_frames(media_cache, monkeypatch):
    from curation.sample_media import MediaUnavailable, sample_clips
    from curation.video import frames_at
    from workers.video_clip import VideoClipParams, VideoClipStage

    try:
        bikes = sample_clips(media_cache)["bikes"]
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")
    seen = spy_on_frames(monkeypatch)
    stage = VideoClipStage(VideoClipParams(model=TINY))
    stage.setup()
    item = StageItem(1, str(bikes), path=str(bikes), span=Span(76, 137, 3.04, 5.48))
    result = stage.process([item])[0]
    assert seen == pytest.approx([3.04 + 2.44 * (k + 0.5) / 5 for k in range(5)])
    assert result.embedding.shape == (32,) and np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
    # the scene embedding is the normalised mean of the frame embeddings
    frames = frames_at(bikes, seen, end_s=5.48, short_side=256)
    per_frame = stage._clip.embed_images([Image.fromarray(f.pixels) for f in frames])
    mean = per_frame.mean(axis=0)
    assert np.allclose(result.embedding, mean / np.linalg.norm(mean), atol=1e-5)
    taxonomies, _ = load_taxonomies(stage._clip)
    assert result.style in next(t.labels for t in taxonomies if t.name == "style")
