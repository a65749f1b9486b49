"""TransNetV2 by ONNX Runtime (``models.transnet``, the scenes stage's default on a CPU): the packaged
weights, the (2+1)D convolutions written as 2D ones, exported once to ONNX and cached on local disk, and
(scenes@6's default) that export quantized to int8 (``models.transnet_int8``). Real frames (a clip
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
    """A cache folder holding the fp32 export and its int8 model (made by the first model built on it)."""
    from models.transnet import TransNetV2Model

    folder = tmp_path_factory.mktemp("onnx-cache")
    model = TransNetV2Model(device="cpu", threads=1, cache_dir=folder)
    assert model.backend == "onnxruntime" and model.precision == "int8" and model.exported and model.net is None
    assert len(list(folder.glob("*.onnx"))) == 2
    return folder


def test_onnxruntime_gives_torch_s_probabilities_on_real_frames(frames, cache):
    from models.transnet import TransNetV2Model

    small, fps = frames
    ort = TransNetV2Model(device="cpu", threads=1, cache_dir=cache, precision="fp32")
    torch = TransNetV2Model(device="cpu", threads=1, backend="torch")
    assert not ort.exported and ort.precision == "fp32" and "int8" not in ort.onnx_path.name
    assert ort.weights_sha256 == torch.weights_sha256 and torch.session is None and torch.precision == "fp32"
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
    fp32 = next(p for p in cache.glob("*.onnx") if "int8" not in p.name)
    for name in (fp32.name, fp32.name + ".sha256"):
        shutil.copy(cache / name, tmp_path / name)
    first = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path, precision="fp32")
    path = first.onnx_path
    assert not first.exported and path.parent == tmp_path
    before = path.stat()
    again = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path, precision="fp32")
    assert not again.exported and path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_ino == before.st_ino
    good = first.predict(small[:100])
    # a file cut short (a full disk, a copy that stopped) is not read: it is exported again, whole
    with open(path, "r+b") as f:
        f.truncate(before.st_size // 2)
    rebuilt = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path, precision="fp32")
    assert rebuilt.exported and path.stat().st_size == before.st_size
    np.testing.assert_array_equal(rebuilt.predict(small[:100]).single, good.single)
    # nothing half-written is left beside it (each file is written to a temporary name, then renamed)
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, path.name + ".sha256"])
    assert TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path, precision="fp32").exported is False


def test_int8_stays_within_0_03_of_fp32_and_finds_the_same_transitions(frames, cache):
    """scenes@6's default: the same transitions as fp32 on real frames (hard cuts, a cross-fade, a fade),
    every probability within 0.03 of fp32's (measured: <= 0.015 on the six sample clips), and the cascade's
    partial pass still scores exactly the full pass's windows."""
    from models.transnet import TransNetV2Model

    small, fps = frames
    int8 = TransNetV2Model(device="cpu", threads=1, cache_dir=cache)
    fp32 = TransNetV2Model(device="cpu", threads=1, cache_dir=cache, precision="fp32")
    assert not int8.exported and int8.precision == "int8" and int8.onnx_path.name.startswith("transnetv2-int8-")
    assert int8.onnx_path.parent == fp32.onnx_path.parent and int8.onnx_path != fp32.onnx_path
    a, b = int8.predict(small), fp32.predict(small)
    assert b.single.max() > 0.5 and b.many.max() > 0.5
    np.testing.assert_allclose(a.single, b.single, atol=0.03)
    np.testing.assert_allclose(a.many, b.many, atol=0.03)
    assert not np.array_equal(a.single, b.single)  # it is another model, not the fp32 one under another name
    p = ScenesParams()
    cuts, gradual = transitions_from_probabilities(a.single, a.many, fps, p)
    assert (cuts, gradual) == transitions_from_probabilities(b.single, b.many, fps, p) and cuts and gradual
    only = np.zeros(len(small), bool)
    only[120] = True
    part = int8.predict(small, only=only)
    assert part.scored.sum() == 50 and np.array_equal(part.single[part.scored], a.single[part.scored])


def test_the_int8_model_is_made_from_the_cached_export_and_its_calibration_is_fixed(cache, tmp_path, monkeypatch):
    """The int8 model is quantized from the fp32 export already in the folder (not exported again), calibrated
    on the same frames on every machine (scikit-image's bundled photos), and a new calibration recipe is a new
    cache key: the old file is never taken for the new one."""
    import models.transnet_int8 as int8
    from models.transnet import TransNetV2Model

    fp32 = next(p for p in cache.glob("*.onnx") if "int8" not in p.name)
    for name in (fp32.name, fp32.name + ".sha256"):
        shutil.copy(cache / name, tmp_path / name)
    before = (tmp_path / fp32.name).stat().st_mtime_ns
    made = TransNetV2Model(device="cpu", threads=1, cache_dir=tmp_path)
    assert made.exported and made.precision == "int8" and (tmp_path / fp32.name).stat().st_mtime_ns == before
    assert made.onnx_path.read_bytes() == int8.int8_cache_path(cache / fp32.name).read_bytes()  # deterministic
    windows = int8.calibration_windows()
    assert len(windows) == int8.CALIBRATION_WINDOWS and all(w.shape == (100, 27, 48, 3) and w.dtype == np.uint8
                                                            for w in windows)
    frames = np.concatenate(windows).astype(np.int16)
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 40).sum() >= 5 and np.median(steps) < 5  # hard cuts between slow pans
    assert (frames.mean(axis=(1, 2, 3)) < 20).sum() >= 3  # fades through black
    assert all(np.array_equal(x, y) for x, y in zip(windows, int8.calibration_windows()))
    monkeypatch.setattr(int8, "CALIBRATION", "another-recipe")
    assert int8.int8_cache_path(made.onnx_path.with_name(fp32.name)) != made.onnx_path


def test_the_backend_and_precision_are_params_of_the_configuration():
    from models.transnet import TransNetV2Model

    default, torch = ScenesStage(ScenesParams()), ScenesStage(ScenesParams(transnet_backend="torch"))
    fp32 = ScenesStage(ScenesParams(transnet_precision="fp32"))
    assert ScenesParams().transnet_backend == "onnxruntime" and ScenesStage.version == "6"
    assert default.config().params["transnet_backend"] == "onnxruntime"
    assert default.config().params["transnet_precision"] == "int8"
    assert len({default.config().config_id, torch.config().config_id, fp32.config().config_id}) == 3
    # what runs the network is recorded beside the weights: here (a CPU) ONNX Runtime in int8 with its recipe
    runtime = default.config().models["transnetv2-runtime"]
    assert runtime.startswith("onnxruntime-") and "-int8-skimage-pans-1-" in runtime
    assert "-fp32-" in fp32.config().models["transnetv2-runtime"]
    assert torch.config().models["transnetv2-runtime"].startswith("torch-") and torch.config().models["transnetv2-runtime"].endswith("-cpu")
    from models.transnet import runtime_identity
    # a GPU worker runs torch in fp32 whatever the params say, and records it: its results are its own
    assert runtime_identity("onnxruntime", "int8", device="cuda").endswith("-fp32-cuda")
    assert "transnetv2-runtime" not in ScenesStage(ScenesParams(detector="content")).config().models
    with pytest.raises(ValueError, match="unknown TransNetV2 backend"):
        TransNetV2Model(device="cpu", backend="tensorrt")
    for hostile in ("int4", "fp32; DROP TABLE tasks", "", "../fp32"):
        with pytest.raises(ValueError, match="transnet_precision"):
            ScenesParams(transnet_precision=hostile)
        with pytest.raises(ValueError, match="unknown TransNetV2 precision"):
            TransNetV2Model(device="cpu", precision=hostile)


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


def test_models_pull_makes_the_derived_files_that_workers_then_load(tmp_path, monkeypatch):
    """``curation models pull transnetv2`` (from any folder) leaves the fp32 export and the int8 model in the
    weights folder's derived/, where a worker finds them without exporting; a folder it cannot write is a
    clear error, exit 1."""
    import subprocess
    import sys

    from models.transnet import TransNetV2Model

    weights = tmp_path / "weights"
    env = dict(os.environ, CURATION_WEIGHTS_DIR=str(weights), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "models", "pull", "transnetv2"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.name for p in (weights / "derived").iterdir())
    assert len(made) == 4 and sum(n.endswith(".onnx") for n in made) == 2 and any("int8" in n for n in made)
    assert proc.stdout.count("transnetv2: derived ") == 2
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CURATION_CACHE_DIR", str(tmp_path / "cache"))
    for precision in ("int8", "fp32"):
        model = TransNetV2Model(device="cpu", threads=1, precision=precision)
        assert not model.exported and model.onnx_path.parent == weights / "derived"
    assert not (tmp_path / "cache").exists()
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "derived").write_text("a file in the way")
    env["CURATION_WEIGHTS_DIR"] = str(blocked)
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "models", "pull", "transnetv2"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "cannot write the derived files" in proc.stdout + proc.stderr
