"""Instruction captions of mined pairs (report §4.3, last step of Figure 5) and what follows them: a mining
job with ``--instructions`` ends with ``pair_instruction`` (both real images in one captioner request, the tiny
random Qwen-VL here) on the pairs ``pair_verify`` keeps; ``curated_pairs`` shows the instruction under the
job's configuration; the pairs export to Parquet (``pairs/job-<id>/``) and encode into instruct-editing shards
(``curation encode --view curated_pairs``: target latent, source latent as reference, instruction as caption)."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from curation.export import export_slice
from curation.latents import UncaptionedSamples, encode_slice
from curation.pairs import submit_mining
from tests.helpers import run_until_done
from tests.test_pairs import ALL, VERIFY, image_job  # noqa: F401 - the image job fixture
from training.encode import tiny_image_vae
from workers.pair_instruction import PROMPT, clean_instruction
from workers.stage import get_stage

TINY_VLM = {"model": "qwen-vl-tiny-random", "max_pixels": 224 * 224, "max_tokens": 8}


def test_clean_instruction_drops_labels_quotes_and_intro_phrases():
    assert clean_instruction('Instruction: "Add a red umbrella."') == "Add a red umbrella."
    assert clean_instruction("**Edit instruction:** Make the sky orange.") == "Make the sky orange."
    assert clean_instruction("  Remove the cup from the table. ") == "Remove the cup from the table."


def test_the_stage_asks_with_both_images_and_records_provenance():
    stage = get_stage("pair_instruction")
    params = stage.Params(**TINY_VLM)
    assert params.prompt == PROMPT and params.backend == "transformers"
    config = stage(params).config()
    other = stage(stage.Params(**TINY_VLM, prompt="Say what changed.")).config()
    assert config.config_id != other.config_id  # another prompt is another configuration
    assert stage.pair_input and stage.modalities == frozenset({"pair"})


def test_instructions_of_kept_pairs_export_and_encode(engine, db_url, image_job, tmp_path):  # noqa: F811
    job, ids, _folder = image_job
    # the tiny random DINOv2 scores most aligned crops above Table 1's 0.97: keep every verified pair here
    sub = submit_mining(engine, job, k=16, matcher="sift", candidates=ALL, verify={**VERIFY, "near_copy_sim": 1.0},
                        chunk_size=4, instruction=TINY_VLM)
    with engine.connect() as conn:
        stages = conn.execute(text("SELECT stages FROM jobs WHERE job_id = :j"), {"j": sub.job_id}).scalar_one()
    assert stages == ["pair_candidates", "pair_verify", "pair_instruction"]
    run_until_done(engine, db_url, sub.job_id, {"pair_candidates": 1, "pair_verify": 1, "pair_instruction": 1},
                   timeout_s=900)

    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text("SELECT * FROM curated_pairs WHERE job_id = :j ORDER BY pair_id"),
                                              {"j": sub.job_id}).mappings()]
        stored = conn.execute(text("SELECT r.asset_id, r.instruction_tokens, r.backend, r.weights_sha256 "
                                   "FROM pair_instruction_results r JOIN job_assets ja ON ja.asset_id = r.asset_id "
                                   "AND ja.job_id = :j"), {"j": sub.job_id}).all()
        status = conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": sub.job_id}).scalar_one()
    assert status == "completed"
    kept_by_verify = [r for r in rows if r["pair_verify_version"] is not None and r["n_groups"] >= 1
                      and not r["is_simple_crop"]]
    instructed = [r for r in rows if r["instruction_raw"] is not None]
    assert instructed and {r["pair_id"] for r in instructed} <= {r["pair_id"] for r in kept_by_verify}
    assert len(stored) == len(instructed) and all(s.instruction_tokens >= 1 and s.backend == "transformers"
                                                  and s.weights_sha256 == "random-init" for s in stored)
    assert all(r["instruction_model"] == "qwen-vl-tiny-random" and r["instruction_prompt_version"].startswith(
        "pair_instruction:") for r in instructed)
    # the verification gate is pair_verify's keep(): a simple crop got no request
    crops = [r for r in rows if r["pair_verify_version"] is not None and r["is_simple_crop"]]
    assert crops and all(r["instruction_raw"] is None for r in crops)
    no_group = [r for r in rows if r["n_groups"] == 0]
    assert all(r["instruction_raw"] is None for r in no_group)

    # Parquet: every instructed pair with both images and its scores, under pairs/job-<id>/
    out = tmp_path / "pairs-export"
    result = export_slice(engine, predicate="instruction_raw IS NOT NULL", output=str(out), view="curated_pairs",
                          job_id=sub.job_id)
    assert result.n_rows == len(instructed)
    assert {f["bucket"] for f in result.files} == {"pairs"} and {f["source"] for f in result.files} == {
        f"job-{sub.job_id}"}
    table = pq.read_table(result.files[0]["uri"]).to_pylist()
    assert {r["pair_id"] for r in table} == {r["pair_id"] for r in instructed}
    assert all(r["source_uri"] and r["target_uri"] and r["inliers"] is not None and "instruction" in r for r in table)
    # a hostile predicate over the pairs view is refused before anything runs
    from curation.export import ExportError

    with pytest.raises(ExportError):
        export_slice(engine, predicate="true; DELETE FROM image_pairs", output=str(tmp_path / "x"),
                     view="curated_pairs", job_id=sub.job_id)

    # encode: pairs without an instruction are refused before anything is encoded ...
    vae, info = tiny_image_vae()
    with pytest.raises(UncaptionedSamples, match="no instruction"):
        encode_slice(engine, predicate="true", output=str(tmp_path / "refused"), tier="low", vae=vae, vae_info=info,
                     job_id=sub.job_id, view="curated_pairs")
    assert not (tmp_path / "refused").exists()
    # ... the instructed ones become editing samples: target latent, source reference, instruction caption
    shards_dir = tmp_path / "edit-shards"
    enc = encode_slice(engine, predicate="instruction_raw IS NOT NULL", output=str(shards_dir), tier="low", vae=vae,
                       vae_info=info, job_id=sub.job_id, view="curated_pairs", allow_uncaptioned=True)
    assert enc.n_latents == len(instructed)
    by_pair = {r["pair_id"]: r for r in instructed}
    seen = set()
    for tar_path in shards_dir.rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            for name in names:
                if name.endswith(".json"):
                    meta = json.load(tar.extractfile(name))
                    key = name.split(".")[0]
                    assert f"{key}.reference.npy" in names and f"{key}.source.jpg" in names
                    pair = by_pair[meta["pair_id"]]
                    assert meta["caption"] == (pair["instruction"] or "").strip()
                    assert meta["source_uri"] == pair["source_uri"] and meta["uri"] == pair["target_uri"]
                    seen.add(meta["pair_id"])
    assert seen == set(by_pair)
    with engine.connect() as conn:
        recorded = set(conn.execute(text("SELECT asset_id FROM latents WHERE asset_id = ANY(:ids)"),
                                    {"ids": list(by_pair)}).scalars())
    assert recorded == set(by_pair)  # latents.asset_id: the pair asset
