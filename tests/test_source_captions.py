"""Captions from curated media to the trainer, on real photos: a Parquet source list with captions and
metadata columns → curate (probe) → the views' source_caption / metadata → `curation encode --vae tiny`
(captions in every sample's JSON; uncaptioned samples refused) → Parquet export → 2 training steps that
read non-empty captions."""

from __future__ import annotations

import json
import random
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from curation.export import export_slice
from curation.latents import caption_fields, main_caption
from curation.spec import SpecError
from tests.helpers import submit_spec
from tests.test_cli import cli, drain
from training.captions import pick_caption
from training.train import TrainConfig, Trainer

CAPTIONS = {  # written for these photos (scikit-image and Debian opencv-doc)
    "astronaut.png": "Portrait of an astronaut in an orange flight suit in front of the American flag",
    "coffee.png": "A cup of coffee on a saucer with a spoon, seen from above",
    "chelsea.png": "A ginger tabby cat lying down and looking to the side",
    "rocket.jpg": "A rocket standing on its launch pad under a blue sky",
    "camera.png": "Black-and-white photo of a man behind a camera on a tripod",
    "baboon.jpg": "Close-up of a mandrill's face with a red nose and blue ridged cheeks",
    "coins.png": None,  # no caption in the list
}


def _source_list(tmp_path, skimage_dir, debian_photos):
    d = tmp_path / "photos"
    d.mkdir()
    for name in CAPTIONS:
        src = skimage_dir / name if (skimage_dir / name).exists() else next(
            p for p in debian_photos["opencv"] if p.name == name)
        shutil.copyfile(src, d / name)
    names = list(CAPTIONS)
    table = pa.table({"uri": names, "caption": [CAPTIONS[n] for n in names],
                      "aesthetic": [5.0 + i / 10 for i in range(len(names))],
                      "url": [f"https://example.org/{n}" for n in names]})
    pq.write_table(table, d / "list.parquet")
    return d / "list.parquet"


def test_source_captions_into_shards_and_training(engine, db_url, skimage_dir, debian_photos, tmp_path):
    listing = _source_list(tmp_path, skimage_dir, debian_photos)
    job = submit_spec(engine, {"name": "captioned", "modality": "image",
                               "source": {"uri": str(listing), "metadata_columns": ["aesthetic", "url"]},
                               "stages": [{"name": "probe"}]})
    drain(db_url, "probe")
    with engine.connect() as conn:
        rows = {r.uri.rsplit("/", 1)[-1]: r for r in conn.execute(text(
            "SELECT uri, source_caption, metadata FROM curated_images WHERE job_id = :j"), {"j": job})}
    assert {n: r.source_caption for n, r in rows.items()} == CAPTIONS
    assert rows["coffee.png"].metadata == {"aesthetic": 5.1, "url": "https://example.org/coffee.png"}

    # the captioner's caption, under a configuration this job used, wins over the list's; another
    # configuration's (newer) caption is never shown for this job
    with engine.begin() as conn:
        astronaut = conn.execute(text("SELECT asset_id FROM assets WHERE uri LIKE '%astronaut.png'")).scalar_one()
        for config in ("caption-job", "caption-other"):
            conn.execute(text("INSERT INTO stage_configs (config_id, stage, stage_version, params, models) "
                              "VALUES (:c, 'caption', 'caption@1', '{}', '{}')"), {"c": config})
            conn.execute(text(
                "INSERT INTO caption_results (asset_id, config_id, stage_version, caption_en, caption_en_raw, "
                "caption_en_tokens, caption_ru, frames_sampled, backend, model, weights_sha256, prompt_version) "
                "VALUES (:a, :c, 'caption@1', :en, :en, 9, :ru, 1, 'transformers', 'm', 's', 'p1')"),
                {"a": astronaut, "c": config, "en": f"An astronaut posing for a portrait ({config})",
                 "ru": "Портрет астронавта" if config == "caption-job" else None})
        conn.execute(text("INSERT INTO job_configs (job_id, stage, config_id) VALUES (:j, 'caption', 'caption-job')"),
                     {"j": job})

    shards = tmp_path / "shards"
    refused = cli(db_url, "encode", "--job", str(job), "--where", "true", "--vae", "tiny", "--output", str(shards),
                  check=False)
    assert refused.returncode != 0 and "1 of 7 samples have no caption" in refused.stderr
    assert not shards.exists()  # nothing encoded
    cli(db_url, "encode", "--job", str(job), "--where", "source_caption IS NOT NULL OR caption_en IS NOT NULL",
        "--vae", "tiny", "--tier", "low", "--output", str(shards))
    samples = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as t:
            samples += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
    by_name = {s["uri"].rsplit("/", 1)[-1]: s for s in samples}
    assert set(by_name) == {n for n, c in CAPTIONS.items() if c}
    assert by_name["astronaut.png"]["caption"] == "An astronaut posing for a portrait (caption-job)"
    assert by_name["astronaut.png"]["captions"] == {
        "caption_en": "An astronaut posing for a portrait (caption-job)", "caption_ru": "Портрет астронавта",
        "source_caption": CAPTIONS["astronaut.png"]}
    assert all(s["caption"] == CAPTIONS[n] for n, s in by_name.items() if n != "astronaut.png")

    # the Parquet export carries the captions and the metadata (as JSON text)
    export_slice(engine, predicate="decoded", output=str(tmp_path / "export"), job_id=job)
    exported = [r for f in (tmp_path / "export").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    coffee = next(r for r in exported if r["uri"].endswith("coffee.png"))
    assert coffee["source_caption"] == CAPTIONS["coffee.png"] and json.loads(coffee["metadata"])["aesthetic"] == 5.1
    assert next(r for r in exported if r["uri"].endswith("astronaut.png"))["caption_ru"] == "Портрет астронавта"

    # two training steps read non-empty captions, drawn among the variants with the configured weights
    cfg = TrainConfig(model="tiny", text_encoders="tiny", lr=1e-3, warmup_steps=1, max_steps=100, t_max=2,
                      image_share=1.0, checkpoint_every=0, uncond_prob=0.0, caption_weights={"caption_*": 1.0, "source_caption": 1.0})
    trainer = Trainer(cfg, [str(p) for p in sorted(shards.glob("*.tar"))], tmp_path / "run")
    seen: list[str] = []
    encode = trainer.text.encode

    def spy(prompts, content="image", images=None):
        seen.extend(prompts)
        return encode(prompts, content, images)

    trainer.text.encode = spy
    trainer.train(2, log=None)
    assert trainer.step_num == 2 and len(seen) >= 2
    written = {c for s in samples for c in s["captions"].values()}
    assert all(c and c in written for c in seen)


def test_caption_columns_and_variant_weights():
    row = {"asset_id": 1, "caption_en": " A dog. ", "caption_en_raw": "The image shows a dog.", "caption_ru": None,
           "caption_en_tokens": 3, "caption_version": "caption@1", "source_caption": "dog",
           "caption_variants": {"en_short": "dog", "ru_short": ""}}
    got = caption_fields(row)
    assert got == {"caption_en": "A dog.", "source_caption": "dog", "caption_variants.en_short": "dog"}
    assert main_caption(got) == "A dog." and main_caption({"source_caption": "dog"}) == "dog"
    meta = {"caption": "A dog.", "captions": {"caption_en": "A dog.", "caption_en_short": "Dog", "source_caption": "d"}}
    rng = random.Random(0)
    assert pick_caption(meta, None, rng) == "A dog."
    assert pick_caption(meta, {"source_caption": 1.0}, rng) == "d"
    picks = {pick_caption(meta, {"caption_en*": 1.0}, rng) for _ in range(50)}
    assert picks == {"A dog.", "Dog"}
    assert pick_caption({"caption": "x"}, {"caption_en": 1.0}, rng) == "x"  # old shards: the main caption


def test_a_missing_metadata_column_is_refused_at_submission(engine, tmp_path):
    pq.write_table(pa.table({"uri": ["a.jpg"], "TEXT": ["a cat"]}), tmp_path / "list.parquet")
    with pytest.raises(SpecError, match="no column.*aesthetic"):
        submit_spec(engine, {"name": "m", "modality": "image", "stages": [{"name": "probe"}],
                             "source": {"uri": str(tmp_path / "list.parquet"), "metadata_columns": ["aesthetic"]}})
