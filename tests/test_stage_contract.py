"""The stage contract, checked over every built-in stage: with tiny params (the tiny random-weight variants
of the real model classes, a real YOLOv8n) on real media, ``setup()`` → ``process()`` → ``teardown()``
gives one result of the stage's ``result_type`` per item, whose fields are exactly the columns of its
result table in the migrated database, with provenance wherever a model scored it, under a config id
that does not depend on the instance. Also: the runtime tears every instance down (evicted, or the
worker stopping), and no stage module reaches the database."""

from __future__ import annotations

import ast
import dataclasses
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from curation.sample_media import MediaUnavailable, sample_clips
from tests.missing import unavailable
from workers.edges import EdgesStage
from workers.stage import ItemFailure, Span, Stage, StageItem, builtin_stage_names, get_stage

WORKERS = Path(__file__).resolve().parents[1] / "workers"
KEY_COLUMNS = {"asset_id", "config_id", "stage_version", "created_at"}  # the runtime's, not the stage's
PHOTOS = ("astronaut.png", "coffee.png")
SCENE = Span(76, 137, 3.04, 5.48)  # one shot of bikes.mp4 (its cuts are at frames 30, 76, 137, 187, 242)

CRAFT = {"backend": "craft", "craft_model": "craft-tiny-random"}
CLIP = {"model": "clip-tiny-random"}
QALIGN = {"model": "qwen-vl-tiny-random", "max_pixels": 224 * 224}
THUMBNAILS = str(Path(tempfile.gettempdir()) / "curation-contract-thumbnails")  # not the state folder
CAPTIONER = {"backend": "transformers", "model": "qwen-vl-tiny-random", "max_pixels": 224 * 224, "max_tokens": 8}


def tiny_params(name: str, yolo: str) -> dict:
    """Params that make the stage quick on a CPU: the tiny variants, small grids and sides."""
    return {
        "text": CRAFT,
        "video_text": CRAFT,
        "clip": CLIP,
        "video_clip": CLIP,
        "objects": {"model": yolo},
        "video_objects": {"model": yolo},
        "watermark": {"classifier": "watermark-tiny-random", "detector": yolo},
        "video_watermark": {"classifier": "watermark-tiny-random", "detector": yolo},
        "topiq": {"technical_model": "topiq-tiny-random", "aesthetic_model": "topiq-tiny-random", "max_side": 256},
        "qalign": QALIGN,
        "video_qalign": QALIGN,
        "complexity": {"model": "sam2-tiny-random", "points_per_side": 4, "max_side": 256},
        "motion": {"model": "motion-tiny-random"},
        "dover": {"model": "dover-tiny-random"},
        "caption": CAPTIONER,
        "video_caption": {**CAPTIONER, "frames": 2},
        "domain": CAPTIONER,
        "video_domain": {**CAPTIONER, "frames": 2},
        "caption_variants": CAPTIONER,
        "video_caption_variants": CAPTIONER,
        "clip_text_score": CLIP,
        "thumbnail": {"output": THUMBNAILS},
        "video_thumbnail": {"output": THUMBNAILS, "frames": 2},
        "dino": {"model": "dinov2-tiny-random"},
        "pair_verify": {"matcher": "sift", "dino_model": "dinov2-tiny-random", "max_side": 256},
        "pair_instruction": CAPTIONER,
    }.get(name, {})


@pytest.fixture(scope="module")
def bikes(media_cache) -> Path:
    try:
        return Path(sample_clips(media_cache)["bikes"])
    except (MediaUnavailable, KeyError) as exc:
        unavailable(f"real clips unavailable: {exc}")


@pytest.fixture(scope="module")
def image_items(skimage_dir) -> list[StageItem]:
    """Real photos as the runtime hands them over: bytes, the decoded image and the probe's result."""
    probe = get_stage("probe")()
    items = []
    for i, name in enumerate(PHOTOS):
        path = skimage_dir / name
        if not path.is_file():
            unavailable(f"scikit-image photo {name} missing")
        item = StageItem(i + 1, str(path), data=path.read_bytes(), image=Image.open(path).convert("RGB"),
                         path=str(path))
        (scores,) = probe.process([item])
        assert not isinstance(scores, ItemFailure), scores
        item.prior["probe"] = scores
        items.append(item)
    return items


@pytest.fixture(scope="module")
def video_items(bikes) -> tuple[StageItem, StageItem]:
    """The whole real video (for video_probe and scenes) and one of its scenes (the frame-sampled stages)."""
    video = StageItem(1, str(bikes), path=str(bikes))
    (probe,) = get_stage("video_probe")().process([video])
    assert not isinstance(probe, ItemFailure), probe
    video.prior["video_probe"] = probe
    scene = StageItem(2, str(bikes), path=str(bikes), span=SCENE, prior={"video_probe": probe})
    return video, scene


def pair_items(cls: type[Stage], images: list[StageItem]) -> list[StageItem]:
    """Items of a pair stage as the runtime hands them over: an image with its neighbourhood (the
    candidates stage), or a pair asset with both images (``pair_input``)."""
    from workers.stage import Neighbour, Neighbourhood, PairMembers

    a, b = images[:2]
    if cls.neighbour_input:
        near = Neighbour(b.asset_id, 0.9, 0.85, "both", 0, 0.8)
        return [dataclasses.replace(a, neighbours=Neighbourhood(0, 0.8, {}, (near,)))]
    return [StageItem(100, f"pair:{a.asset_id}:{b.asset_id}", pair=PairMembers(a, b))]


@pytest.fixture(scope="module")
def table_columns(db_url) -> dict[str, set[str]]:
    """Column names of every table of the migrated database."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SAWarning

    from curation.db import make_engine

    engine = make_engine(db_url, pool_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SAWarning)  # pgvector's type: only the names matter here
            found = inspect(engine)
            return {t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names()}
    finally:
        engine.dispose()


def provenance_fields(result_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(result_type)
            if f.name == "model" or f.name.endswith(("_model", "_sha256"))]


def loads_models(stage: Stage) -> bool:
    """Registry models and weights files (the config's), or a tiny random-weight variant in the params."""
    from models.registry import TINY_SUFFIX

    tiny = [v for v in stage.params.model_dump().values() if isinstance(v, str) and v.endswith(TINY_SUFFIX)]
    return bool(stage.config().models) or bool(tiny)


def with_priors(cls: type[Stage], items: list[StageItem], yolo: str) -> list[StageItem]:
    """Copies of the items with the results of the stages ``cls`` requires that they lack (e.g. the
    caption a caption_variants stage rewrites), made by those stages with their tiny params."""
    for required in cls.requires:
        if all(required in item.prior for item in items):
            continue
        dep = get_stage(required)
        stage = dep(dep.Params(**tiny_params(required, yolo)))
        stage.setup()
        try:
            results = stage.process(with_priors(dep, items, yolo))
        finally:
            stage.teardown()
        items = [dataclasses.replace(item, prior={**item.prior, required: r}) for item, r in zip(items, results)]
    return items


@pytest.mark.parametrize("name", builtin_stage_names())
def test_every_builtin_stage_keeps_the_contract(name, request, yolo_onnx, table_columns):
    cls = get_stage(name)
    params = tiny_params(name, str(yolo_onnx))
    if name == "quality":
        from models.registry import pull

        pull("brisque-live")  # BRISQUE's LIVE model files, from Debian's opencv-doc
    if "video" in cls.modalities:
        video, scene = request.getfixturevalue("video_items")
        items = [video] if name in ("video_probe", "scenes") else [scene]
    elif "pair" in cls.modalities:
        items = pair_items(cls, request.getfixturevalue("image_items"))
    else:
        items = request.getfixturevalue("image_items")

    items = with_priors(cls, items, yolo=str(yolo_onnx))
    stage = cls(cls.Params(**params))
    stage.setup()
    try:
        results = stage.process(items)
    finally:
        stage.teardown()

    assert len(results) == len(items)
    for r in results:
        assert not isinstance(r, ItemFailure), f"{name}: {r}"
        assert isinstance(r, cls.result_type)
    # the result's fields are the columns of its table (less the keys the runtime adds)
    assert cls.result_table in table_columns, f"{name}: no table {cls.result_table}"
    assert table_columns[cls.result_table] - KEY_COLUMNS == set(cls.result_columns())
    assert len(cls.result_columns()) == len(set(cls.result_columns()))
    # provenance wherever a model scored
    if loads_models(stage):
        fields = provenance_fields(cls.result_type)
        assert fields, f"{name} loads a model but its results name none"
        for r in results:
            for f in fields:
                value = getattr(r, f)
                assert isinstance(value, str) and value, f"{name}: {f} is {value!r}"
    # the config is the params' and the weights', not the instance's
    again = cls(cls.Params(**params)).config()
    assert again.config_id == stage.config().config_id and again.config_id.startswith(f"{name}:")


def test_frame_sampled_stages_share_the_reports_frame_counts():
    from workers.scene_frames import FrameSampledStage

    frames = {n: get_stage(n).Params().frames for n in ("video_text", "video_watermark", "video_objects",
                                                         "video_clip", "video_qalign")}
    assert frames == {"video_text": 3, "video_watermark": 5, "video_objects": 5, "video_clip": 5, "video_qalign": 8}
    for n in (*frames, "video_hash", "dynamics", "motion"):
        assert issubclass(get_stage(n), FrameSampledStage), n


FORBIDDEN = ("sqlalchemy", "curation.db", "curation.broker", "curation.dedup", "curation.embeddings")


def test_no_stage_module_reaches_the_database():
    """Stages are pure: the runtime (runtime.py) and the supervisor own the database."""
    offenders = []
    for path in sorted(WORKERS.glob("*.py")):
        if path.name in ("runtime.py", "supervisor.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names
                          if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert not offenders, offenders


class CountingEdges(EdgesStage):
    """The edges stage, recording when the runtime sets an instance up and tears it down."""

    events: ClassVar[list[tuple[str, float]]] = []

    def setup(self) -> None:
        super().setup()
        self.events.append(("setup", self.params.threshold))

    def teardown(self) -> None:
        self.events.append(("teardown", self.params.threshold))
        super().teardown()


def test_the_runtime_tears_down_evicted_instances_and_all_at_stop(engine, db_url, skimage_dir, tmp_path):
    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copyfile(skimage_dir / name, folder / name)
    ref = f"{__name__}:CountingEdges"
    for threshold in (0.1, 0.2):  # two configs: one instance each
        submit_spec(engine, {"name": f"edges-{threshold}", "modality": "image", "source": {"uri": str(folder)},
                             "stages": [{"name": "probe"}, {"name": ref, "params": {"threshold": threshold}}],
                             "fuse_cpu_stages": False})  # the edges stage's own worker is what is tested
    StageWorker(db_url, "probe", sweep=False).run(idle_exit_s=0.5)
    CountingEdges.events.clear()
    worker = StageWorker(db_url, ref, sweep=False)
    worker.max_stage_instances = 1
    stats = worker.run(idle_exit_s=0.5)
    assert stats["tasks"] == 2
    events = CountingEdges.events
    first, second = events[0][1], events[2][1]
    # the first instance is torn down before the second is set up; the second when the worker stops
    assert events == [("setup", first), ("teardown", first), ("setup", second), ("teardown", second)]
    assert {first, second} == {0.1, 0.2}
