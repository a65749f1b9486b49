"""The inputs of editing-pair mining (report §4.3) on real photos: DINOv2 embeddings (the tiny random model:
shapes and invariants only, its similarities mean nothing) and dlib faces (the real bundled weights:
counts, boxes, descriptors and ``face_sim`` on real faces), and both stages through the runtime into
``dino_results`` / ``face_results``."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from pydantic import ValidationError
from sqlalchemy import text

from curation.spec import parse_spec
from models.dino import TINY, DinoEmbedder
from models.faces import KEEP_DISTANCE, SAME_PERSON_DISTANCE, face_similarity
from models.registry import MissingWeights
from tests.missing import unavailable
from workers.dino import DinoParams, DinoStage
from workers.faces import FacesStage
from workers.stage import StageItem

# astronaut (Eileen Collins), messi5 (Lionel Messi), basketball1/2 (two frames of one player)
NO_FACE = ("chelsea.png", "coffee.png", "rocket.jpg")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        unavailable(f"sample photo {path} missing")
    with Image.open(path) as img:
        return img.convert("RGB")


def _opencv(debian_photos, name: str) -> Path:
    found = [p for p in debian_photos["opencv"] if p.name == name]
    if not found:
        unavailable(f"opencv-doc photo {name} missing")
    return found[0]


def _edits(image: Image.Image) -> dict[str, Image.Image]:
    """Edited copies of one photo: the same person, other pixels."""
    return {
        "flipped": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "resized": image.resize((image.width * 5 // 8, image.height * 5 // 8), Image.Resampling.LANCZOS),
        "recoloured": ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.3)).enhance(0.4),
    }


@pytest.fixture(scope="module")
def faces_stage():
    stage = FacesStage()
    stage.setup()
    yield stage
    stage.teardown()


def _faces(stage, *images):
    out = stage.process([StageItem(i + 1, f"mem://{i}", image=img) for i, img in enumerate(images)])
    assert all(hasattr(r, "face_count") for r in out), out  # no ItemFailure
    return out


# --- DINOv2 ----------------------------------------------------------------------------------------


def test_tiny_dino_embeds_real_photos_as_unit_vectors(skimage_dir):
    photos = [_open(skimage_dir / n) for n in ("astronaut.png", "chelsea.png", "coffee.png")]
    stage = DinoStage(DinoParams(model=TINY))
    stage.setup()
    out = stage.process([StageItem(i, f"mem://{i}", image=img) for i, img in enumerate(photos + photos[:1])])
    emb = np.stack([r.embedding for r in out])
    assert emb.shape == (4, 32) and emb.dtype == np.float32 and stage._dino.dim == 32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[3]) == pytest.approx(1.0, abs=1e-5)  # the same photo again: dino_sim 1
    assert {(r.model, r.weights_sha256) for r in out} == {(TINY, "random-init")}
    assert stage.config().params == {"model": TINY} and stage.config().models == {}  # the name says random-init


def test_a_local_dinov2_folder_loads_through_from_pretrained(skimage_dir, tmp_path):
    """The real-weights path (``Dinov2Model`` + ``AutoImageProcessor.from_pretrained`` of a folder, offline)
    on a folder saved from the tiny model: the same embeddings, and the folder's digest as its identity."""
    tiny = DinoEmbedder(TINY)
    tiny._net.save_pretrained(tmp_path / "dinov2")
    tiny._processor.save_pretrained(tmp_path / "dinov2")
    local = DinoEmbedder(str(tmp_path / "dinov2"))
    photo = _open(skimage_dir / "astronaut.png")
    assert local.dim == 32 and len(local.weights_sha256) == 64
    assert np.allclose(local.embed([photo]), tiny.embed([photo]), atol=1e-5)


def test_the_tiny_dino_never_runs_in_a_real_job_and_absent_weights_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS")
    with pytest.raises(ValidationError, match="random-weight test model"):
        DinoParams(model=TINY)
    with pytest.raises(MissingWeights, match="random-weight"):
        DinoEmbedder(TINY)
    with pytest.raises(ValidationError, match="unknown DINOv2 model"):
        DinoParams(model="dinov2-huge")
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(tmp_path))
    assert DinoParams(model="dinov2-small").model == "dinov2-small"  # a registry name; weights checked at submission
    with pytest.raises(MissingWeights, match="curation models pull dinov2-small"):
        DinoEmbedder("dinov2-small")
    with pytest.raises(MissingWeights, match="local folder or a hub id in the local cache"):
        DinoEmbedder(str(tmp_path / "no-such-model"))


# --- faces -----------------------------------------------------------------------------------------


def test_one_face_on_the_astronaut_with_its_box_and_a_descriptor(skimage_dir, faces_stage):
    (r,) = _faces(faces_stage, _open(skimage_dir / "astronaut.png"))
    assert r.face_count == 1 and len(r.boxes) == 1
    x0, y0, x1, y1 = r.boxes[0]["box"]  # her face: about x 175-265, y 76-170 of 512 px
    assert 0.30 < x0 < 0.38 and 0.48 < x1 < 0.56 and 0.11 < y0 < 0.19 and 0.29 < y1 < 0.37
    assert r.boxes[0]["score"] > 0.5
    assert r.largest_face_fraction == pytest.approx((x1 - x0) * (y1 - y0), rel=0.02)
    assert r.embedding.shape == (128,) and r.embedding.dtype == np.float32
    assert r.model == "dlib-face-resnet-v1" and len(r.weights_sha256) == 64


def test_the_cnn_detector_finds_the_astronaut_too(skimage_dir):
    """dlib's MMOD CNN (``detector: cnn``; 5-8 s an image on one CPU core, made for a GPU build of dlib)."""
    stage = FacesStage(FacesStage.Params(detector="cnn", upsample=0))
    stage.setup()
    (r,) = _faces(stage, _open(skimage_dir / "astronaut.png"))
    assert r.face_count == 1 and r.embedding.shape == (128,)
    x0, y0, x1, y1 = r.boxes[0]["box"]
    assert 0.28 < x0 < 0.38 and 0.48 < x1 < 0.56 and 0.09 < y0 < 0.19 and 0.28 < y1 < 0.37
    assert "dlib-mmod-face-detector" in stage.config().models


def test_photos_without_a_face_have_no_descriptor(skimage_dir, faces_stage):
    for r in _faces(faces_stage, *(_open(skimage_dir / n) for n in NO_FACE)):
        assert (r.face_count, r.boxes, r.largest_face_fraction, r.embedding) == (0, [], 0.0, None)


def test_two_faces_are_counted_and_get_no_descriptor(skimage_dir, faces_stage):
    astronaut = _open(skimage_dir / "astronaut.png")
    pair = Image.new("RGB", (astronaut.width * 2, astronaut.height))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (astronaut.width, 0))
    (r,) = _faces(faces_stage, pair)
    assert r.face_count == 2 and r.embedding is None
    assert sorted(b["box"][0] < 0.5 for b in r.boxes) == [False, True]


def test_face_similarity_maps_dlib_distance_onto_the_reports_thresholds():
    a = np.zeros(128, dtype=np.float32)
    at = lambda d: face_similarity(a, np.r_[np.float32(d), np.zeros(127, dtype=np.float32)])
    assert at(KEEP_DISTANCE) == pytest.approx(0.7) and at(SAME_PERSON_DISTANCE) == pytest.approx(0.5)
    assert (KEEP_DISTANCE, SAME_PERSON_DISTANCE) == (0.5, 0.6)
    values = [at(d) for d in np.linspace(0.0, 1.4, 29)]
    assert all(b > c for b, c in itertools.pairwise(values))  # the nearer, the more alike
    assert 0.99 < values[0] < 1.0 and 0.0 < values[-1] < 0.01  # never 0: the report's "no face"


def test_face_sim_keeps_the_same_person_and_excludes_another(skimage_dir, debian_photos, faces_stage):
    astronaut = _open(skimage_dir / "astronaut.png")
    others = {n: _open(_opencv(debian_photos, n)) for n in ("messi5.jpg", "basketball1.png", "basketball2.png")}
    copies = _edits(astronaut)
    found = _faces(faces_stage, astronaut, *copies.values(), *others.values())
    assert [r.face_count for r in found] == [1] * len(found)
    desc = dict(zip(["astronaut", *copies, *others], (r.embedding for r in found)))
    for name in copies:  # measured: 0.97-0.98 (distance 0.12-0.19)
        assert face_similarity(desc["astronaut"], desc[name]) > 0.7, name
    # one player in two frames of a sequence: the same person in another photo (measured 0.96, distance 0.24)
    assert face_similarity(desc["basketball1.png"], desc["basketball2.png"]) > 0.7
    for a, b in (("astronaut", "messi5.jpg"), ("astronaut", "basketball1.png"), ("messi5.jpg", "basketball1.png"),
                 ("flipped", "messi5.jpg")):  # measured 0.12-0.26 (distance 0.73-0.84)
        assert 0 < face_similarity(desc[a], desc[b]) < 0.5, (a, b)


# --- through the runtime ---------------------------------------------------------------------------


def test_dino_and_faces_jobs_store_embeddings_faces_and_item_errors(engine, db_url, skimage_dir, debian_photos, tmp_path):
    from curation.embeddings import index_name, similar
    from curation.planner import submit
    from curation.sample_media import write_broken_files
    from workers.runtime import StageWorker

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in [skimage_dir / n for n in ("astronaut.png", *NO_FACE)] + [_opencv(debian_photos, "messi5.jpg")]:
        shutil.copyfile(p, folder / p.name)
    _open(skimage_dir / "astronaut.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "astronaut_flipped.jpg")
    broken = write_broken_files(folder, skimage_dir / "rocket.jpg")
    job = submit(engine, parse_spec({
        "name": "pairs-inputs", "modality": "image", "source": {"uri": str(folder)}, "chunk_size": 4,
        "stages": [{"name": "probe"}, {"name": "dino", "params": {"model": TINY}}, {"name": "faces"}],
    })).job_id
    for stage in ("probe", "dino", "faces"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=1.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"
        dims = conn.execute(text("SELECT vector_dims(embedding) FROM dino_results")).scalars().all()
        assert dims == [32] * 6
        idx = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname=:n"),
                           {"n": index_name(TINY, 32, "dino_results")}).scalar_one()
        assert "ON public.dino_results USING hnsw" in idx and "vector_cosine_ops" in idx
        faces = {Path(r.uri).name: r for r in conn.execute(text(
            "SELECT a.uri, f.face_count, f.embedding, f.boxes, c.face_count AS view_count, c.largest_face_fraction "
            "FROM face_results f JOIN assets a USING (asset_id) JOIN curated_images c USING (asset_id)"))}
        errors = {Path(r.uri).name: r.error_class for r in conn.execute(text(
            "SELECT a.uri, e.error_class FROM item_errors e JOIN assets a USING (asset_id)"))}
    assert set(faces) == {"astronaut.png", "astronaut_flipped.jpg", "messi5.jpg", *NO_FACE}
    assert set(errors) == {p.name for p in broken.all()}  # bad media: an item error each, no row
    for name, row in faces.items():
        assert row.view_count == row.face_count == (0 if name in NO_FACE else 1)
        assert (row.embedding is None) == (name in NO_FACE)
        assert isinstance(row.boxes, list) and len(row.boxes) == row.face_count
    as_array = lambda v: np.array(v.strip("[]").split(",") if isinstance(v, str) else v, dtype=np.float32)
    astronaut, flipped, messi = (as_array(faces[n].embedding) for n in ("astronaut.png", "astronaut_flipped.jpg", "messi5.jpg"))
    assert face_similarity(astronaut, flipped) > 0.7 and face_similarity(astronaut, messi) < 0.5
    with engine.begin() as conn:
        asset = conn.execute(text("SELECT asset_id FROM assets WHERE uri LIKE '%/astronaut.png'")).scalar_one()
        hits = similar(conn, asset, k=3, table="dino_results")
    assert hits[0].asset_id == asset and hits[0].cosine == pytest.approx(1.0, abs=1e-4) and len(hits) == 3
