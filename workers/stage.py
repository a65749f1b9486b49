"""The stage contract and the stage registry.

A stage is pure: it receives a batch of ``StageItem`` (asset id, URI and, as the stage declares,
the raw bytes, the decoded image and the results of earlier stages) and returns, for each item, a
typed result (a dataclass whose fields are the columns of the stage's result table) or an
``ItemFailure``. It never talks to the database or to storage; the runtime does both.

Scores are always stored. ``keep()`` only decides whether an asset goes on to the *next* stage of
the job (a cheap gate in front of expensive stages); keeping or dropping for a dataset is a SQL
predicate over the ``curated_images`` view.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from workers.columns import ViewColumns


@dataclass(frozen=True)
class Resources:
    """What one actor of the stage's pool needs (Ray resources)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 1.0


@dataclass(frozen=True)
class Span:
    """The part of a video an asset is: a scene's frames ``[start_frame, end_frame)`` and times
    ``[start_s, end_s)`` (seconds of the video's presentation timeline)."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class StageItem:
    asset_id: int
    uri: str
    data: bytes | None = None
    image: Any = None  # PIL.Image.Image, RGB
    prior: dict[str, Any] = field(default_factory=dict)  # earlier stage name -> its result dataclass
    path: str | None = None  # a local file holding the media (stages with ``needs_path``)
    span: Span | None = None  # for a scene: its range of the parent video
    keep_image: bool = False
    """Set by a fused pass (``workers/runtime.py``): a stage that fully decodes ``data`` itself (the
    probe) leaves that decode in ``image``, and the stages after it in the pass share it — no stage may
    change ``image`` in place."""
    pair: PairMembers | None = None
    """For a stage with ``pair_input``: the pair asset's two images (see ``PairMembers``)."""
    neighbours: Neighbourhood | None = None
    """For a stage with ``neighbour_input`` (the pair candidates): the image's nearest neighbours."""


@dataclass
class PairMembers:
    """The two images of a pair asset (kind ``pair``, ``docs/pairs.md``), filled by the runtime for a
    stage with ``pair_input``: each member's asset id, URI, image decoded upright (EXIF orientation
    applied, the job's pixel cap) and ``prior`` — that image's results of the stages the pair stage lists
    in ``member_requires``, under the configurations of the image job the pairs were mined from."""

    source: StageItem
    target: StageItem


@dataclass(frozen=True)
class Neighbour:
    """One nearest neighbour of an image within the mining job's slice: cosine similarities by CLIP and
    by DINOv2 (both computed for every neighbour, whichever index found it; None without that
    embedding), which kNN found it (``clip``, ``dino`` or ``both``), its cluster and that cluster's
    adaptive CLIP threshold, and its results of the stage's ``member_requires``."""

    asset_id: int
    clip_sim: float | None
    dino_sim: float | None
    found_by: str
    cluster_id: int | None = None
    clip_thr: float | None = None
    prior: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Neighbourhood:
    """What the runtime gathers for an image of a pair-mining job (``Stage.neighbour_input``): its own
    cluster, adaptive threshold and ``member_requires`` results, and its neighbours, most similar first."""

    cluster_id: int | None
    clip_thr: float | None
    prior: dict[str, Any]
    neighbours: tuple[Neighbour, ...]


@dataclass(frozen=True)
class ItemFailure:
    """One item could not be scored. ``error_class`` is a short machine-readable category."""

    error_class: str
    message: str


@dataclass(frozen=True)
class StageConfig:
    """What makes a stored result: the stage version, the parameters that change the score, each
    model's weights identity (registry digest or file sha256), and — for a stage that reads earlier
    results (``Stage.requires``) — the configurations of those inputs in the job (``inputs``: a caption's
    variants made from another captioner's caption are other results). Results are keyed by
    ``config_id``: the same configuration is reused, another is computed and stored beside it."""

    stage: str
    stage_version: str
    params: dict[str, Any]
    models: dict[str, str]
    inputs: dict[str, list[str]] = field(default_factory=dict)  # required stage -> its config ids in the job

    def canonical(self) -> str:
        body: dict[str, Any] = {"stage": self.stage, "version": self.stage_version, "params": self.params,
                                "models": self.models}
        if self.inputs:
            body["inputs"] = {k: sorted(v) for k, v in self.inputs.items()}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)

    @property
    def config_id(self) -> str:
        """Stable: the same inputs give the same id on every machine and in every release."""
        return f"{self.stage}:{hashlib.sha256(self.canonical().encode()).hexdigest()[:20]}"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")


class Stage(ABC, Generic[P, R]):
    """A stage with params ``P`` (a pydantic model, ``Params``) and results ``R`` (``result_type``).

    The runtime calls ``setup()`` once when it makes an instance, before any ``process()``, and
    ``teardown()`` once when it drops the instance (evicted, or the worker stops); stage code assumes
    both (no "already set up" guards). Whoever calls ``process()`` directly (a test) calls ``setup()``
    first."""

    name: ClassVar[str]
    version: ClassVar[str]
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    result_type: ClassVar[type]
    result_table: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 32
    max_runtime_s: ClassVar[float] = 600.0
    needs_bytes: ClassVar[bool] = False
    needs_image: ClassVar[bool] = False
    needs_path: ClassVar[bool] = False  # a local file (videos: the demuxer seeks); S3 objects are downloaded
    image_draft_size: ClassVar[int | None] = None
    """The short side the stage needs: JPEGs decode at reduced DCT scale (model stages), or a model-free CPU
    stage gets the full decode reduced by the same integer factor (``reduced_view``)."""
    requires: ClassVar[tuple[str, ...]] = ()  # earlier stages whose results ``prior`` must hold
    models: ClassVar[tuple[str, ...]] = ()  # registry names of the weights the stage loads (models/registry.py)
    view_columns: ClassVar[tuple[ViewColumns, ...]] = ()
    """What the stage shows in the curated views (rendered by ``workers/views.py``)."""
    near_duplicate_column: ClassVar[str | None] = None
    """A ``bit(64)`` hash column: the runtime records near-duplicate pairs of the rows it writes
    (``curation.dedup``), in the same transaction. Stage modules declare; they run no SQL."""
    embedding_model_param: ClassVar[str | None] = None
    """The param naming the model of an ``embedding`` column: the runtime makes sure that model's HNSW
    index exists (``curation.embeddings``), after the completion commits."""
    threshold_params: ClassVar[frozenset[str]] = frozenset()
    """Params that only threshold a stored raw score (a flag, a gate, a duplicate distance): applied
    when a slice is read (the curated views read them from ``job_stages``), never part of the config,
    so changing one recomputes nothing."""
    run_params: ClassVar[frozenset[str]] = frozenset({"timeout_s"})
    """Params that bound the run (time limits, decode guards), not the score: not part of the config."""
    reuse_by_content: ClassVar[bool] = True
    """A byte-identical copy of an asset already scored under the same config (same sha256; for a scene,
    the same video content and frames) gets the stored result instead of being fetched and scored.
    False for the stages that compute the content hash (probe, video_probe)."""
    children_field: ClassVar[str | None] = None
    """A stage that cuts its input into new assets (the scene split) names the result field holding
    the ``Span`` list; the runtime stores them as assets of kind ``scene`` and the *scenes* go on to
    the next stage. That field is not a column."""
    pair_input: ClassVar[bool] = False
    """The stage scores pair assets (kind ``pair``): the runtime fills ``StageItem.pair`` with both
    images (decoded upright) and their ``member_requires`` results; a member that cannot be read or
    decoded is an item error of that pair only."""
    member_requires: ClassVar[tuple[str, ...]] = ()
    """Stages of the *image* job whose results each member of a pair (or each image and neighbour of
    ``neighbour_input``) carries in its ``prior``, under that job's configurations."""
    neighbour_input: ClassVar[bool] = False
    """The stage gets each image's nearest neighbours (``StageItem.neighbours``): CLIP and DINOv2 kNN
    through the pgvector HNSW indexes, within the mining job's slice (``curation.pairs``)."""
    pairs_field: ClassVar[str | None] = None
    """A stage that finds pairs (``pair_candidates``) names the result field holding its
    ``CandidatePair`` list: the runtime stores each new pair as an asset of kind ``pair`` with its
    ``image_pairs`` row, and the *pairs* go on to the next stage, in the same transaction. Not a column."""
    windowed: ClassVar[bool] = False
    """The runtime may hand this stage time windows of a long video (assets of kind ``window``, with a
    ``span``) instead of the whole video (the job's ``scene_window_s``); its children keep the video as
    their parent."""

    params: P

    def __init__(self, params: P | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def stage_version(cls) -> str:
        return f"{cls.name}@{cls.version}"

    @classmethod
    def result_columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.result_type)
                if f.name not in (cls.children_field, cls.pairs_field)]

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        """The registry models this stage loads with these params (a stage whose model is a param
        overrides this). Checked at submission: absent weights refuse the job."""
        return cls.models

    def config(self) -> StageConfig:
        """This instance's configuration (see ``StageConfig``): the models ``models_for`` declares and any
        weights file a param names, identified by their digests (a tiny test variant: ``random-init``,
        its name being in the params)."""
        from models.registry import WEIGHT_SUFFIXES, weights_identity

        scored = {k: v for k, v in self.params.model_dump(mode="json").items()
                  if k not in self.threshold_params and k not in self.run_params}
        models = {m: weights_identity(m) for m in self.models_for(self.params)}
        for value in scored.values():  # a weights file given by path (e.g. a YOLO .onnx export)
            if isinstance(value, str) and value.endswith(WEIGHT_SUFFIXES) and Path(value).is_file():
                models.setdefault(value, weights_identity(value))
        if self.takes_reduced_view():
            scored["image_view"] = f"reduce:{self.image_draft_size}"  # see ``reduced_view``: other pixels, other results
        return StageConfig(self.name, self.stage_version(), scored, models)

    def takes_reduced_view(self) -> bool:
        """Whether the runtime hands this stage ``reduced_view(full decode, image_draft_size)`` — a model-free
        CPU stage that asks for less than full size, in fused and unfused runs alike, so that a fused pass
        shares one decode and writes what separate tasks write — instead of a JPEG draft decode of its own
        (model stages). Recorded in the configuration (``image_view``). Worked out once per params object
        and draft size (``model_free`` builds the class's default params, ~0.1 ms: the runtime asks per file)."""
        known = self.__dict__.get("_takes_reduced_view")
        if known is None or known[0] is not self.params or known[1] != self.image_draft_size:
            answer = self.image_draft_size is not None and self.model_free(self.params)
            known = self._takes_reduced_view = (self.params, self.image_draft_size, answer)
        return known[2]

    @classmethod
    def model_free(cls, params: BaseModel) -> bool:
        """A light CPU stage: no GPU, no model with its default params or with ``params`` (a registry name or a
        weights file in a param counts), so it may share a fused pass and reduced views. Decided per class
        and params, never per job."""
        from models.registry import WEIGHT_SUFFIXES

        if cls.resources.gpus > 0 or cls.models or cls.models_for(cls.Params()) or cls.models_for(params):
            return False
        return not any(isinstance(v, str) and v.endswith(WEIGHT_SUFFIXES) for v in params.model_dump().values())

    def setup(self) -> None:
        """Load models once per instance; the runtime calls it before the first ``process()``. Default:
        nothing to load."""

    def teardown(self) -> None:
        """Free what ``setup()`` loaded (models, GPU memory); the runtime calls it once when it drops the
        instance. Default: nothing to free."""

    @abstractmethod
    def process(self, items: Sequence[StageItem]) -> list[R | ItemFailure]:
        """One result (``result_type``) or ``ItemFailure`` per item, in order."""

    def task_seconds(self, result: Any) -> float | None:
        """Seconds of video an asset holds, when the stage knows it: the next stage's tasks are then
        sized by duration (``video_seconds_per_task`` of the job) instead of by count."""
        return None

    def keep(self, result: Any) -> bool:
        """Whether the asset goes on to the next stage of the job."""
        return True


_BUILTIN = {
    "probe": "workers.probe:ProbeStage",
    "resolution": "workers.resolution:ResolutionStage",
    "phash": "workers.phash:PhashStage",
    "edges": "workers.edges:EdgesStage",
    "quality": "workers.quality:QualityStage",
    "text": "workers.text:TextStage",
    "video_probe": "workers.video_probe:VideoProbeStage",
    "scenes": "workers.scenes:ScenesStage",
    "video_hash": "workers.video_hash:VideoHashStage",
    "dynamics": "workers.dynamics:DynamicsStage",
    "video_text": "workers.video_text:VideoTextStage",
    "clip": "workers.clip:ClipStage",
    "objects": "workers.objects:ObjectsStage",
    "video_objects": "workers.video_objects:VideoObjectsStage",
    "motion": "workers.motion:MotionStage",
    "watermark": "workers.watermark:WatermarkStage",
    "video_watermark": "workers.video_watermark:VideoWatermarkStage",
    "video_clip": "workers.video_clip:VideoClipStage",
    "topiq": "workers.topiq:TopiqStage",
    "qalign": "workers.qalign:QAlignStage",
    "video_qalign": "workers.video_qalign:VideoQAlignStage",
    "complexity": "workers.complexity:ComplexityStage",
    "dover": "workers.dover:DoverStage",
    "caption": "workers.caption:CaptionStage",
    "video_caption": "workers.video_caption:VideoCaptionStage",
    "domain": "workers.domain:DomainStage",
    "video_domain": "workers.domain:VideoDomainStage",
    "caption_variants": "workers.caption_variants:CaptionVariantsStage",
    "video_caption_variants": "workers.caption_variants:VideoCaptionVariantsStage",
    "clip_text_score": "workers.clip_text_score:ClipTextScoreStage",
    "pair_candidates": "workers.pair_candidates:PairCandidatesStage",
    "pair_verify": "workers.pair_verify:PairVerifyStage",
    "pair_instruction": "workers.pair_instruction:PairInstructionStage",
    "thumbnail": "workers.thumbnail:ThumbnailStage", "video_thumbnail": "workers.thumbnail:VideoThumbnailStage",
    "dino": "workers.dino:DinoStage",
    "faces": "workers.faces:FacesStage",
}


def reduced_view(image: Any, short_side: int | None) -> Any:
    """``image`` box-reduced by the largest factor of 8, 4, 2 that keeps both sides at least ``short_side``
    (the factor JPEG DCT scaling would use): one decode serves every stage that needs less than full size."""
    if short_side is None:
        return image
    most = min(image.width // short_side, image.height // short_side)
    factor = next((f for f in (8, 4, 2) if most >= f), 1)
    return image.reduce(factor) if factor > 1 else image


class UnknownStage(KeyError):
    pass


def builtin_stage_names() -> list[str]:
    return list(_BUILTIN)


def get_stage(name: str) -> type[Stage]:
    """A built-in stage by name, or a custom one by import path ``package.module:ClassName``."""
    target = _BUILTIN.get(name, name if ":" in name else None)
    if target is None:
        raise UnknownStage(f"unknown stage {name!r}; built-in stages: {', '.join(_BUILTIN)}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownStage(f"cannot import stage {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStage(f"{name!r} is not a Stage subclass")
    return cls
