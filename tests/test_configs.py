"""Results keyed by their configuration (migration 0013, ``workers.stage.StageConfig``): another config is
computed and stored beside the old one, the same config is reused, thresholds are applied when the slice
is read, and byte-identical copies cost no stage work. Workers run in-process (the same StageWorker the
Ray actors run) on real photos."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image
from sqlalchemy import text

from tests.helpers import submit_spec
from workers.runtime import StageWorker
from workers.stage import get_stage


def drain(db_url, *stages):
    """Run each stage's worker until its queue is empty; the counters of each."""
    return {stage: StageWorker(db_url, stage).run(idle_exit_s=0.5) for stage in stages}


@pytest.fixture
def few_photos(tmp_path, skimage_dir):
    d = tmp_path / "few"
    d.mkdir()
    for name in ("astronaut.png", "rocket.jpg", "coffee.png"):
        shutil.copyfile(skimage_dir / name, d / name)
    return d


def job(engine, folder, name, stages):
    # a task per stage, so each stage's counters show (fused passes: tests/test_fused_stages.py)
    return submit_spec(engine, {"name": name, "modality": "image", "source": {"uri": str(folder), "name": "few"},
                                "stages": stages, "chunk_size": 8, "fuse_cpu_stages": False})


def test_stage_config_identity():
    text_stage = get_stage("text")
    a = text_stage(text_stage.Params(backend="ppocrv4")).config()
    b = text_stage(text_stage.Params(backend="craft", craft_model="craft-tiny-random")).config()
    assert a.config_id != b.config_id and a.config_id.startswith("text:")
    assert a.config_id == text_stage(text_stage.Params()).config().config_id  # stable
    assert a.models and all(len(v) == 64 for v in a.models.values())  # PP-OCRv4's weights digest
    phash = get_stage("phash")
    # a threshold is not part of the identity; a time limit neither
    assert phash(phash.Params(max_distance=2)).config() == phash(phash.Params(max_distance=12)).config()
    dyn = get_stage("dynamics")
    assert dyn(dyn.Params(static_above=0.9, timeout_s=5)).config() == dyn(dyn.Params()).config()
    assert dyn(dyn.Params(sample_fps=4)).config() != dyn(dyn.Params()).config()


def test_two_text_backends_keep_both_results_and_each_job_sees_its_own(engine, db_url, few_photos):
    ppocr = job(engine, few_photos, "ppocr", [{"name": "probe"}, {"name": "text"}])
    drain(db_url, "probe", "text")
    craft = job(engine, few_photos, "craft", [{"name": "probe"},
                                              {"name": "text", "params": {"backend": "craft",
                                                                          "craft_model": "craft-tiny-random"}}])
    runs = drain(db_url, "probe", "text")
    assert runs["probe"]["items_ok"] == 0  # same probe config: reused
    assert runs["text"]["items_ok"] == 3  # another text config: computed
    with engine.connect() as conn:
        per_asset = conn.execute(text(
            "SELECT asset_id, count(*) AS n, array_agg(DISTINCT model ORDER BY model) AS models "
            "FROM text_results GROUP BY asset_id")).all()
        assert len(per_asset) == 3 and all(r.n == 2 for r in per_asset)
        assert all(len(r.models) == 2 for r in per_asset)
        for job_id in (ppocr, craft):
            shown = conn.execute(text(
                "SELECT c.asset_id, c.text_boxes, t.text_boxes AS own FROM curated_images c "
                "JOIN job_configs jc ON jc.job_id = c.job_id AND jc.stage = 'text' "
                "JOIN text_results t ON t.asset_id = c.asset_id AND t.config_id = jc.config_id "
                "WHERE c.job_id = :j"), {"j": job_id}).all()
            assert len(shown) == 3 and all(r.text_boxes == r.own for r in shown)
        configs = conn.execute(text("SELECT job_id, config_id FROM job_configs WHERE stage = 'text' ORDER BY 1")).all()
        assert [c.job_id for c in configs] == [ppocr, craft] and configs[0].config_id != configs[1].config_id
        stored = conn.execute(text("SELECT params, models FROM stage_configs WHERE config_id = :c"),
                              {"c": configs[1].config_id}).one()
        assert stored.params["backend"] == "craft"

    again = job(engine, few_photos, "ppocr again", [{"name": "probe"}, {"name": "text"}])
    rerun = drain(db_url, "probe", "text")
    assert rerun["probe"]["items_ok"] == 0 and rerun["text"]["items_ok"] == 0  # nothing scored
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM text_results")).scalar_one() == 6
        assert conn.execute(text("SELECT count(*) FROM curated_images WHERE job_id = :j AND text_boxes IS NOT NULL"),
                            {"j": again}).scalar_one() == 3


def test_a_changed_threshold_changes_the_slice_without_scoring(engine, db_url, tmp_path, skimage_dir):
    folder = tmp_path / "dups"
    folder.mkdir()
    shutil.copyfile(skimage_dir / "astronaut.png", folder / "astronaut.png")
    shutil.copyfile(skimage_dir / "coffee.png", folder / "coffee.png")
    with Image.open(skimage_dir / "astronaut.png") as im:  # cropped, smaller, re-encoded: 2 bits away
        buf = io.BytesIO()
        im.convert("RGB").crop((8, 8, 504, 504)).resize((307, 307)).save(buf, "JPEG", quality=30)
    (folder / "astronaut-small.jpg").write_bytes(buf.getvalue())
    stages = [{"name": "probe"}, {"name": "phash", "params": {"max_distance": 8}}]
    loose = job(engine, folder, "loose", stages)
    drain(db_url, "probe", "phash")
    with engine.connect() as conn:
        copy = conn.execute(text("SELECT asset_id, near_duplicate_distance AS d, is_unique FROM curated_images "
                                 "WHERE job_id = :j AND uri LIKE '%astronaut-small.jpg'"), {"j": loose}).one()
    assert copy.is_unique is False and copy.d is not None and copy.d >= 1
    strict = job(engine, folder, "strict", [{"name": "probe"},
                                            {"name": "phash", "params": {"max_distance": copy.d - 1}}])
    runs = drain(db_url, "probe", "phash")
    assert runs["probe"]["items_ok"] == 0 and runs["phash"]["items_ok"] == 0  # nothing recomputed
    with engine.connect() as conn:
        flags = dict(conn.execute(text("SELECT job_id, is_unique FROM curated_images WHERE asset_id = :a"),
                                  {"a": copy.asset_id}).all())
        n_pairs = conn.execute(text("SELECT count(*) FROM near_duplicates")).scalar_one()
    assert flags == {loose: False, strict: True}
    assert n_pairs >= 2


def test_byte_identical_copies_cost_no_stage_work(engine, db_url, tmp_path, skimage_dir):
    folder = tmp_path / "copies"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    originals = ("astronaut.png", "rocket.jpg")
    for name in originals:
        shutil.copyfile(skimage_dir / name, folder / "a" / name)
        shutil.copyfile(skimage_dir / name, folder / "b" / ("copy-of-" + name))
        shutil.copyfile(skimage_dir / name, folder / "b" / ("second-copy-of-" + name))
    stages = [{"name": "probe"}, {"name": "phash"}, {"name": "edges"}]
    first = job(engine, folder / "a", "originals", stages)
    drain(db_url, "probe", "phash", "edges")
    second = submit_spec(engine, {"name": "copies", "modality": "image", "source": {"uri": str(folder / "b"),
                                                                                   "name": "mirror"},
                                  "stages": stages, "chunk_size": 8, "fuse_cpu_stages": False})
    runs = drain(db_url, "probe", "phash", "edges")
    assert runs["probe"]["items_ok"] == 4  # the probe hashes the bytes: the one stage that reads the copies
    assert runs["phash"]["reused"] == 4 and runs["edges"]["reused"] == 4
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.uri, c.edge_density, c.phash, c.exact_duplicate_of, c.is_unique FROM curated_images c "
            "WHERE c.job_id = :j ORDER BY c.uri"), {"j": second}).all()
        originals_rows = {r.uri.rsplit("/", 1)[-1]: r for r in conn.execute(text(
            "SELECT uri, edge_density, phash FROM curated_images WHERE job_id = :j"), {"j": first})}
    assert len(rows) == 4 and all(r.exact_duplicate_of is not None and not r.is_unique for r in rows)
    for r in rows:
        original = originals_rows[r.uri.rsplit("/", 1)[-1].removeprefix("second-").removeprefix("copy-of-")]
        assert (r.edge_density, r.phash) == (original.edge_density, original.phash)


def test_flipped_rotated_and_greyscale_copies_are_near_duplicates_and_the_colour_original_is_kept(
        engine, db_url, tmp_path, skimage_dir):
    """phash@2: a mirrored copy matches by the mirrored hash, a 3° rotation by the centre hash, a greyscale
    copy by the full hash; the keep rule prefers the colour original over a bigger greyscale PNG, and the
    job's keep_rule pixels_bytes (the old rule) does not."""
    from PIL import ImageOps

    folder = tmp_path / "group"
    folder.mkdir()
    original = Image.open(skimage_dir / "coffee.png").convert("RGB")
    original.save(folder / "coffee.jpg", quality=90)
    ImageOps.mirror(original).save(folder / "coffee-flipped.jpg", quality=90)
    original.rotate(3, resample=Image.Resampling.BICUBIC).save(folder / "coffee-rotated.jpg", quality=90)
    ImageOps.grayscale(original).convert("RGB").save(folder / "coffee-grey.png")  # same pixels, more bytes
    for name in ("astronaut.png", "chelsea.png", "rocket.jpg"):
        shutil.copyfile(skimage_dir / name, folder / name)
    assert (folder / "coffee-grey.png").stat().st_size > (folder / "coffee.jpg").stat().st_size
    colour = job(engine, folder, "colour", [{"name": "probe"}, {"name": "phash"}])
    drain(db_url, "probe", "phash")
    old_rule = job(engine, folder, "old rule", [{"name": "probe"}, {"name": "phash",
                                                                  "params": {"keep_rule": "pixels_bytes"}}])
    drain(db_url, "probe", "phash")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.job_id, regexp_replace(c.uri, '^.*/', '') AS name, c.is_unique, n.kind FROM curated_images c "
            "LEFT JOIN assets o ON o.asset_id = c.near_duplicate_of "
            "LEFT JOIN near_duplicates n ON n.asset_id = c.asset_id AND n.other_id = c.near_duplicate_of "
            "AND n.config_id = (SELECT config_id FROM phash_results WHERE asset_id = c.asset_id LIMIT 1)")).all()
    unique = {(r.job_id, r.name): r.is_unique for r in rows}
    kinds = {r.name: r.kind for r in rows if r.job_id == colour}
    for other in ("astronaut.png", "chelsea.png", "rocket.jpg", "coffee.jpg"):
        assert unique[(colour, other)], other
    for copy in ("coffee-flipped.jpg", "coffee-rotated.jpg", "coffee-grey.png"):
        assert not unique[(colour, copy)], copy
    assert kinds["coffee-flipped.jpg"] == "mirror" and kinds["coffee-grey.png"] == "full"
    assert kinds["coffee-rotated.jpg"] in ("center", "full")
    assert unique[(old_rule, "coffee-grey.png")] and not unique[(old_rule, "coffee.jpg")]  # the old rule's pick


def test_the_keep_rule_keeps_the_colour_uncropped_unrotated_better_copy(engine, db_url, tmp_path, skimage_dir):
    """phash@3's keep_rule (colour, framing, quality, pixels, bytes): of a real photo's group — the colour
    original, a greyscale PNG (more bytes), a 3° rotation and a 10 % crop scaled back to full size (both
    re-encoded at a higher JPEG quality: more bytes) — the original is kept; of a second photo and its
    blurred copy (same pixels, more bytes), the BRISQUE score keeps the sharp one. The order is the job's:
    without framing and quality the bigger transformed copies win, as they did under phash@2."""
    from PIL import ImageFilter, ImageOps

    from models.registry import pull

    pull("brisque-live")  # BRISQUE's LIVE model files, from Debian's opencv-doc
    folder = tmp_path / "groups"
    folder.mkdir()
    coffee = Image.open(skimage_dir / "coffee.png").convert("RGB")
    w, h = coffee.size
    coffee.save(folder / "coffee.jpg", quality=90)
    ImageOps.grayscale(coffee).convert("RGB").save(folder / "coffee-grey.png")
    coffee.rotate(3, resample=Image.Resampling.BICUBIC).save(folder / "coffee-rotated.jpg", quality=97)
    coffee.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h), Image.Resampling.BICUBIC).save(
        folder / "coffee-cropped.jpg", quality=97)
    chelsea = Image.open(skimage_dir / "chelsea.png").convert("RGB")
    chelsea.save(folder / "chelsea.jpg", quality=85)
    chelsea.filter(ImageFilter.GaussianBlur(2)).save(folder / "chelsea-blurred.jpg", quality=100)
    shutil.copyfile(skimage_dir / "astronaut.png", folder / "astronaut.png")
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert min(sizes["coffee-grey.png"], sizes["coffee-rotated.jpg"], sizes["coffee-cropped.jpg"]) > sizes["coffee.jpg"]
    assert sizes["chelsea-blurred.jpg"] > sizes["chelsea.jpg"]

    rules = {"default": None, "phash@2": "colour_pixels_bytes", "no framing": "colour,quality,pixels,bytes",
             "no quality": "colour,framing,pixels,bytes", "pixels first": "pixels,bytes"}
    jobs = {}
    for name, rule in rules.items():
        phash = {"name": "phash", **({"params": {"keep_rule": rule}} if rule else {})}
        jobs[name] = job(engine, folder, name, [{"name": "probe"}, phash, {"name": "quality"}])
    drain(db_url, "probe", "phash", "quality")
    with engine.connect() as conn:  # one configuration each: the keep rule is applied when the slice is read
        assert conn.execute(text("SELECT count(*), count(DISTINCT config_id) FROM phash_results")).one() == (7, 1)
        rows = conn.execute(text(
            "SELECT c.job_id, regexp_replace(c.uri, '^.*/', '') AS name, c.is_unique, c.border_fill, c.brisque "
            "FROM curated_images c WHERE c.job_id = ANY(:j)"), {"j": list(jobs.values())}).all()
    kept = {name: sorted(r.name for r in rows if r.job_id == j and r.is_unique) for name, j in jobs.items()}
    score = {r.name: (r.border_fill, r.brisque) for r in rows if r.job_id == jobs["default"]}
    assert score["coffee-rotated.jpg"][0] > score["coffee.jpg"][0] + 0.02  # the rotation's black corners
    assert score["chelsea-blurred.jpg"][1] > score["chelsea.jpg"][1] + 2  # BRISQUE: lower is better
    assert kept["default"] == ["astronaut.png", "chelsea.jpg", "coffee.jpg"]
    # without framing, the bigger of the rotated and cropped copies wins; without quality, the blurred copy
    assert "coffee.jpg" not in kept["no framing"] and "chelsea.jpg" in kept["no framing"]
    assert "chelsea-blurred.jpg" in kept["no quality"] and "coffee.jpg" in kept["no quality"]
    assert "coffee.jpg" not in kept["phash@2"] and "coffee-grey.png" not in kept["phash@2"]
    assert "coffee-grey.png" in kept["pixels first"]  # the biggest file of the group


def test_a_keep_rule_names_known_criteria_once():
    from pydantic import ValidationError

    from workers.phash import PhashParams

    assert PhashParams().keep_rule == "colour,framing,quality,pixels,bytes"
    assert PhashParams(keep_rule="colour_pixels_bytes").keep_rule == "colour,pixels,bytes"  # phash@2's spelling
    assert PhashParams(keep_rule=" Pixels, quality ").keep_rule == "pixels,quality"
    for bad in ("colour,sharpness", "pixels,pixels", ""):
        with pytest.raises(ValidationError, match="keep_rule"):
            PhashParams(keep_rule=bad)
