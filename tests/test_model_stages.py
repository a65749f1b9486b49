"""The model registry and the stages whose real weights ship offline: BRISQUE (quality) and the PP-OCRv4
detector (text), on real photos; refusal at submission when weights are absent; provenance; a stage that
raises on one image."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter
from sqlalchemy import text

from curation.spec import SpecError
from models import registry
from tests.helpers import submit_spec
from tests.test_cli import cli, drain
from workers.quality import QualityStage
from workers.stage import StageItem
from workers.text import TextStage


def test_contrib_cv2_is_the_one_installed():
    assert hasattr(cv2, "quality"), "BRISQUE needs opencv-contrib-python-headless as the only cv2"


def test_absent_weights_refuse_the_job_with_the_pull_command(engine, db_url, photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(tmp_path / "empty"))
    spec = {"name": "q", "modality": "image", "source": {"uri": str(photo_dir)},
            "stages": [{"name": "probe"}, {"name": "quality"}]}
    with pytest.raises(SpecError, match=r"stages\[1\] \(quality\).*brisque-live.*curation models pull brisque-live"):
        submit_spec(engine, spec)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
    listing = cli(db_url, "models", "list").stdout
    assert "brisque-live" in listing and "ppocrv4-det" in listing and "absent" in listing
    assert "curation models pull brisque-live" in listing
    cli(db_url, "models", "pull", "brisque-live")
    assert registry.status("brisque-live").present
    assert "present, verified" in cli(db_url, "models", "list").stdout
    # a tampered file fails verification
    bad = tmp_path / "empty" / "brisque-live" / "brisque_range_live.yml"
    bad.write_text(bad.read_text() + "\n# edited\n")
    assert "sha256 differs" in registry.status("brisque-live").reason


@pytest.fixture(scope="module")
def brisque_ready():
    registry.pull("brisque-live")


def rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def test_brisque_rates_a_blurred_copy_worse(brisque_ready, debian_photos, skimage_dir):
    stage = QualityStage()
    stage.setup()
    photos = [p for p in debian_photos["opencv"] if p.name in ("baboon.jpg", "fruits.jpg", "building.jpg")]
    photos += [skimage_dir / "astronaut.png"]
    for path in photos:
        img = rgb(path)
        sharp, blurred = stage.process([StageItem(1, str(path), image=img),
                                        StageItem(2, str(path), image=img.filter(ImageFilter.GaussianBlur(4)))])
        assert blurred.brisque > sharp.brisque + 10, (path.name, sharp.brisque, blurred.brisque)
        assert sharp.model == "brisque-live" and len(sharp.weights_sha256) == 64


def test_ppocr_finds_scene_text_and_little_in_nature(debian_photos):
    stage = TextStage()
    stage.setup()
    scenes = [p for p in debian_photos["opencv"] if p.name.startswith("scenetext")]
    nature = [p for p in debian_photos["mate"] if "/nature/" in str(p)]
    assert len(scenes) == 6 and len(nature) == 12
    on_text = stage.process([StageItem(i, str(p), image=rgb(p)) for i, p in enumerate(scenes)])
    on_nature = stage.process([StageItem(i, str(p), image=rgb(p)) for i, p in enumerate(nature)])
    text_boxes = [r.text_boxes for r in on_text]
    nature_boxes = [r.text_boxes for r in on_nature]
    assert all(n >= 1 for n in text_boxes) and np.median(text_boxes) >= 2
    assert np.median(nature_boxes) <= 1 and max(nature_boxes) <= 2, nature_boxes
    assert np.mean(text_boxes) > 2.5 * np.mean(nature_boxes)
    # (the box *area* is not a clean separator with this detector: a textured nature photo can get one
    # large spurious box, so the count is what the test holds it to)
    assert all(0.0 <= r.text_area <= 1.0 for r in on_text + on_nature)


def test_model_stages_in_a_job_record_provenance_and_isolate_a_raising_item(
        brisque_ready, engine, db_url, photo_dir, debian_photos, skimage_dir):
    shutil.copyfile(next(p for p in debian_photos["opencv"] if p.name == "scenetext01.jpg"), photo_dir / "sign.jpg")
    shutil.copyfile(skimage_dir / "chelsea.png", photo_dir / "raise_me.png")
    job = submit_spec(engine, {"name": "models", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}, {"name": "resolution"}, {"name": "quality"},
                                          {"name": "text"}, {"name": "tests.stages:RaisingEdges"}]})
    for stage in ("probe", "resolution", "quality", "text", "tests.stages:RaisingEdges"):
        drain(db_url, stage)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT regexp_replace(uri, '.*/', '') AS f, short_side, brisque, text_boxes, "
                                 "text_area, edge_density FROM curated_images")).all()
        models = conn.execute(text("SELECT DISTINCT model, weights_sha256 FROM quality_results UNION ALL "
                                   "SELECT DISTINCT model, weights_sha256 FROM text_results")).all()
        errors = conn.execute(text("SELECT a.uri, e.error_class, e.message FROM item_errors e "
                                   "JOIN assets a USING (asset_id) WHERE e.job_id = :j"), {"j": job}).all()
    by_name = {r.f: r for r in rows}
    assert {m for m, _ in models} == {"brisque-live", "ppocrv4-det"} and all(len(h) == 64 for _, h in models)
    assert by_name["sign.jpg"].text_boxes >= 3
    ok = [r for r in rows if r.short_side >= 256]
    assert all(r.brisque is not None and r.text_boxes is not None for r in ok)
    # the stage raised on one image: that image alone has an item error, the others have edges
    assert [(e.uri.rsplit("/", 1)[1], e.error_class) for e in errors] == [("raise_me.png", "stage_error:ValueError")]
    assert all(r.edge_density is not None for r in ok if r.f != "raise_me.png")
