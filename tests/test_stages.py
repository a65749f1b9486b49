"""Each image stage on real photos: values, types, ranges and the report's defaults."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from curation.sample_media import resized_copy
from workers.edges import EdgesStage
from workers.phash import PhashStage
from workers.probe import ProbeStage
from workers.resolution import REPORT_MIN_SIDE, ResolutionStage
from workers.stage import ItemFailure, StageItem, get_stage


def item(path, asset_id=1, **kw):
    return StageItem(asset_id=asset_id, uri=str(path), **kw)


def test_registry_knows_the_builtin_stages_and_custom_paths():
    assert get_stage("probe") is ProbeStage
    assert get_stage("tests.stages:SlowProbe").name == "probe"
    with pytest.raises(KeyError):
        get_stage("watermark_v9")


def test_probe_reads_real_photos(skimage_dir):
    path = skimage_dir / "astronaut.png"
    data = path.read_bytes()
    (scores,) = ProbeStage().process([item(path, data=data)])
    assert (scores.format, scores.width, scores.height, scores.mode) == ("PNG", 512, 512, "RGB")
    assert scores.bytes == len(data) and scores.sha256 == hashlib.sha256(data).digest()
    assert scores.decode_ms >= 0


def test_probe_turns_bad_files_into_item_failures(tmp_path, skimage_dir):
    from curation.sample_media import write_broken_files

    broken = write_broken_files(tmp_path, skimage_dir / "rocket.jpg")
    out = ProbeStage().process([item(p, i, data=p.read_bytes()) for i, p in enumerate(broken.all())])
    assert [type(o) for o in out] == [ItemFailure] * 4
    assert [o.error_class for o in out] == ["corrupt_media", "empty_file", "not_an_image", "decompression_bomb"]
    # a lower pixel limit refuses a real photo the same way
    limited = ProbeStage(ProbeStage.Params(max_pixels=1000))
    (o,) = limited.process([item(skimage_dir / "rocket.jpg", data=(skimage_dir / "rocket.jpg").read_bytes())])
    assert o.error_class == "decompression_bomb"


def test_resolution_uses_the_reports_256_px_minimum(skimage_dir):
    assert REPORT_MIN_SIDE == 256 and ResolutionStage.Params().min_side == 256
    stage = ResolutionStage()
    probe = ProbeStage()
    small = skimage_dir / "coins.png"  # 384 x 303
    tiny_img = Image.open(skimage_dir / "astronaut.png").resize((300, 200))
    results = []
    for path in (skimage_dir / "rocket.jpg", small):
        (p,) = probe.process([item(path, data=path.read_bytes())])
        results.append(stage.process([item(path, prior={"probe": p})])[0])
    assert results[0].short_side == 427 and results[0].long_side == 640
    assert results[0].aspect_ratio == pytest.approx(640 / 427, rel=1e-5)
    assert stage.keep(results[0]) and stage.keep(results[1])
    from workers.probe import ProbeScores

    tiny = ProbeScores("PNG", tiny_img.width, tiny_img.height, "RGB", 1, b"", 0.0, 1)
    (r,) = stage.process([item("x", prior={"probe": tiny})])
    assert r.short_side == 200 and not stage.keep(r)


def _hash(path) -> str:
    img = Image.open(path).convert("RGB")
    return PhashStage().process([item(path, image=img)])[0].phash


def hamming(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_phash_is_64_bits_and_robust_to_resize_and_reencode(tmp_path, skimage_dir, debian_photos):
    original = skimage_dir / "astronaut.png"
    copy = resized_copy(original, tmp_path / "copy.jpg", scale=0.6, quality=60)
    h_orig, h_copy = _hash(original), _hash(copy)
    assert len(h_orig) == 64 and set(h_orig) <= {"0", "1"}
    assert hamming(h_orig, h_copy) <= 2
    others = [skimage_dir / "coffee.png", skimage_dir / "chelsea.png", skimage_dir / "rocket.jpg"]
    others += [p for p in debian_photos["opencv"] if p.name in ("baboon.jpg", "fruits.jpg")]
    for other in others:
        assert hamming(h_orig, _hash(other)) > PhashStage.Params().max_distance, other.name


def test_edges_separate_plain_backgrounds_from_detailed_photos(skimage_dir, debian_photos):
    stage = EdgesStage()
    stage.setup()
    plain = Image.new("RGB", (800, 600), (120, 160, 200))
    baboon = next(p for p in debian_photos["opencv"] if p.name == "baboon.jpg")
    (flat,) = stage.process([item("plain", image=plain)])
    (busy,) = stage.process([item(baboon, image=Image.open(baboon).convert("RGB"))])
    (astro,) = stage.process([item("a", image=Image.open(skimage_dir / "astronaut.png").convert("RGB"))])
    assert flat.edge_density == 0.0 and flat.edge_mean < 1e-6
    for photo in (busy, astro):
        assert 0.03 < photo.edge_density <= 1.0 and 0.01 < photo.edge_mean < 1.0


def test_edges_do_not_depend_on_resolution(skimage_dir):
    stage = EdgesStage()
    img = Image.open(skimage_dir / "astronaut.png").convert("RGB")
    (a,) = stage.process([item("a", image=img)])
    (b,) = stage.process([item("b", image=img.resize((1024, 1024), Image.Resampling.BICUBIC))])
    assert abs(a.edge_density - b.edge_density) < 0.05
