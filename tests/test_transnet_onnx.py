"""TransNetV2 by ONNX Runtime (``models.transnet``, scenes@5's default on a CPU): the packaged weights, the
(2+1)D convolutions written as 2D ones, exported once to ONNX and cached on local disk. Real frames (a clip
built from the registry's sample footage with known transitions), the real export and ONNX Runtime; no
wall-clock assertions (bench/scenes.py measures the time)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from curation.sample_media import MediaUnavailable, sample_clips
from curation.transition_clips import build_transition_clips
from tests.missing import unavailable
from tests.test_scene_cascade import small_frames
from workers.scenes import ScenesParams, ScenesStage, transitions_from_probabilities


@pytest.fixture(scope="module")
def frames(media_cache, tmp_path_factory):
    """The first 250 of the 48x27 frames the stage gives TransNetV2 for a built clip (5 windows), its fps."""
    try:
        clips = sample_clips(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"real video clips unavailable: {exc}")
    path, _ = build_transition_clips(tmp_path_factory.mktemp("onnx"), clips)["transitions_b_10fps"]
    small, fps = small_frames(path)
    return small[:250], fps


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding one export (made by the first model built on it)."""
    from models.transnet import TransNetV2Model

    folder = tmp_path_factory.mktemp("onnx-cache")
    model = TransNetV2Model(device="cpu", threads=1, cache_dir=folder)
    assert model.backend == "onnxruntime" and model.exported and model.net is None
    return folder


def test_onnxruntime_gives_torch_s_probabilities_on_real_frames(frames, cache):
    from models.transnet import TransNetV2Model

    small, fps = frames
    ort = TransNetV2Model(device="cpu", threads=1, cache_dir=cache)
    torch = TransNetV2Model(device="cpu", threads=1, backend="torch")
    assert ort.weights_sha256 == torch.weights_sha256 and torch.session is None
    a, b = ort.predict(small), torch.predict(small)
    assert b.single.max() > 0.5 and b.many.max() > 0.5  # the clip has transitions the network sees
    np.testing.assert_allclose(a.single, b.single, atol=1e-5)
    np.testing.assert_allclose(a.many, b.many, atol=1e-5)
    p = ScenesParams()
    assert transitions_from_probabilities(a.single, a.many, fps, p) == transitions_from_probabilities(b.single, b.many, fps, p)
    # the cascade's partial pass too: the same windows, the same probabilities
    only = np.zeros(len(small), bool)
    only[120] = True
    part = ort.predict(small, only=only)
    assert part.scored.sum() == 50 and np.array_equal(part.single[part.scored], a.single[part.scored])


def test_the_export_is_reused_and_a_damaged_one_is_made_again(frames, cache, tmp_path):
    from models.transnet import TransNetV2Model

    small, _ = frames
    shutil.copytree(cache, tmp_path, dirs_exist_ok=True)
    first = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path)
    path = first.onnx_path
    assert not first.exported and path.parent == tmp_path
    before = path.stat()
    again = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path)
    assert not again.exported and path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_ino == before.st_ino
    good = first.predict(small[:100])
    # a file cut short (a full disk, a copy that stopped) is not read: it is exported again, whole
    with open(path, "r+b") as f:
        f.truncate(before.st_size // 2)
    rebuilt = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path)
    assert rebuilt.exported and path.stat().st_size == before.st_size
    np.testing.assert_array_equal(rebuilt.predict(small[:100]).single, good.single)
    # nothing half-written is left beside it (each file is written to a temporary name, then renamed)
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, path.name + ".sha256"])
    assert TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path).exported is False


def test_the_backend_is_a_param_of_the_configuration():
    from models.transnet import TransNetV2Model

    default, torch = ScenesStage(ScenesParams()), ScenesStage(ScenesParams(transnet_backend="torch"))
    assert ScenesParams().transnet_backend == "onnxruntime" and ScenesStage.version == "5"
    assert default.config().params["transnet_backend"] == "onnxruntime"
    assert default.config().config_id != torch.config().config_id
    with pytest.raises(ValueError, match="unknown TransNetV2 backend"):
        TransNetV2Model(device="cpu", backend="tensorrt")


def test_a_read_only_weights_folder_exports_to_the_cache_folder(cache, tmp_path, monkeypatch):
    """deploy/ mounts the weights volume read-only on every Ray pod: the export goes to $CURATION_CACHE_DIR,
    is found there by the next model, and when no folder can be written the error names them all."""
    from models.transnet import TransNetV2Model, export_folders

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "derived").write_text("not a folder")  # as root no chmod stops a write: a file in the way does
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CURATION_CACHE_DIR", str(tmp_path / "cache"))
    assert export_folders() == [weights / "derived", tmp_path / "cache" / "derived"]
    first = TransNetV2Model(device="cpu", threads=1)
    assert first.exported and first.onnx_path.parent == tmp_path / "cache" / "derived"
    again = TransNetV2Model(device="cpu", threads=1)
    assert not again.exported and again.onnx_path == first.onnx_path
    # an export an operator put in the weights folder ahead of time is used first, as it is
    (weights / "derived").unlink()
    shutil.copytree(cache, weights / "derived")
    ahead = TransNetV2Model(device="cpu", threads=1)
    assert not ahead.exported and ahead.onnx_path.parent == weights / "derived"
    # nowhere to write: a clear error naming both folders, nothing left behind
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(blocked / "weights"))
    monkeypatch.setenv("CURATION_CACHE_DIR", str(blocked / "cache"))
    with pytest.raises(OSError, match="CURATION_CACHE_DIR") as err:
        TransNetV2Model(device="cpu", threads=1)
    assert str(blocked / "weights" / "derived") in str(err.value) and str(blocked / "cache" / "derived") in str(err.value)
