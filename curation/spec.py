"""Job specs: the YAML a data engineer writes, validated before anything is enqueued.

```yaml
name: photos-2026-11
modality: image
source:
  uri: ./media/photos          # a folder, an s3:// prefix, or a .txt / .parquet list of URIs
  name: photos                 # the source name (a Parquet partition in the export)
stages:
  - name: probe
    params: {max_pixels: 89478485, decode_timeout_s: 20}
  - name: resolution
    params: {min_side: 256}
  - name: phash
    params: {max_distance: 8}
  - name: edges
chunk_size: 64                 # assets per task
max_attempts: 5
export:
  where: "is_unique AND bucket IS NOT NULL"
  output: ./out/photos         # or s3://bucket/prefix
  overwrite: false             # true: replace the Parquet files already there
```

Every error names the field (``stages[1].params.min_side``) and says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.video import VIDEO_SUFFIXES
from workers.stage import Stage, UnknownStage, get_stage

LIST_SUFFIXES = (".txt", ".parquet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class SpecError(ValueError):
    """A job spec is invalid; the message names each bad field."""


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str = Field(min_length=1, description="folder, s3:// prefix, or a .txt/.parquet list of URIs")
    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    extensions: list[str] | None = Field(
        None, description="file suffixes listed from a folder or prefix (default: the modality's suffixes)"
    )
    caption_column: str | None = Field(
        None, min_length=1, description="a .parquet list's caption / alt-text column, kept as the asset's "
        "source_caption (default: the first of caption, alt_text, alt, text, TEXT that the list has)"
    )
    metadata_columns: list[str] = Field(
        default_factory=list, description="more columns of a .parquet list kept as the asset's metadata (jsonb)"
    )

    @property
    def is_list(self) -> bool:
        return self.uri.lower().endswith(LIST_SUFFIXES)

    @field_validator("name")
    @classmethod
    def _one_path_segment(cls, v: str | None) -> str | None:
        # the name is a folder of the export (<output>/<bucket>/<source>/): never a way out of it
        if v is not None and (".." in v or v.startswith(".")):
            raise ValueError("must not start with '.' or contain '..' (it names a folder of the export)")
        return v

    def source_name(self) -> str:
        if self.name:
            return self.name
        stem = Path(self.uri.rstrip("/")).name
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).strip("_")
        return safe or "source"


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    workers: int | None = Field(None, ge=1, description="actors in this stage's pool (default: from resources)")
    gpus: float | None = Field(None, ge=0, le=8, description="GPUs per actor (default: the stage's resources); "
                               "a model stage runs on the GPU when its actor has one")
    batch_size: int | None = Field(None, ge=1, le=4096, description="items per model call (default: the stage's)")


class ExportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: str = Field("is_unique AND bucket IS NOT NULL", min_length=1)
    output: str = Field(min_length=1)
    rows_per_file: int = Field(100_000, ge=1)
    overwrite: bool = Field(False, description="replace the Parquet files already under output")

    @field_validator("where")
    @classmethod
    def _one_expression(cls, v: str) -> str:
        from curation.user_sql import UnsafeSQL, check_predicate

        try:
            check_predicate(v, what="the predicate")
        except UnsafeSQL as exc:
            raise ValueError(str(exc)) from None
        return v


class PairEmbedding(BaseModel):
    """One kNN index a pair-mining job searches: a stage's stored embeddings (``clip_results``,
    ``dino_results``) of the image job, the configurations it used, their model and width."""

    model_config = ConfigDict(extra="forbid")
    stage: Literal["clip", "dino"]
    model: str = Field(pattern=r"^[a-z0-9-]+$")
    dim: int = Field(ge=1, le=16_000)
    configs: list[str] = Field(min_length=1)


class PairsSpec(BaseModel):
    """What a pair-mining job (modality ``pair``, ``curation pairs mine``) mines: the image job, the
    predicate that chose its slice, the clustering whose clusters set the adaptive CLIP threshold (None:
    the job had none) and the kNN indexes. Written by ``curation.pairs.submit_mining``."""

    model_config = ConfigDict(extra="forbid")
    image_job: int = Field(ge=1)
    where: str | None = None
    clustering_id: int | None = None
    embeddings: list[PairEmbedding] = Field(min_length=1)


MIN_SCENE_WINDOW_S = 120.0  # twice the longest scene: a window is never mistaken for a scene


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    modality: Literal["image", "video", "pair"]
    source: SourceSpec | None = None  # every image and video job has one; a pair job mines another job
    stages: list[StageSpec] = Field(min_length=1)
    chunk_size: int = Field(64, ge=1, le=100_000, description="files per task for the first stage")
    video_seconds_per_task: float = Field(
        600.0, gt=0, description="video: probed videos go on to the scene split in tasks of about this many seconds"
    )
    scene_seconds_per_task: float = Field(
        120.0, gt=0, description="video: scenes of one video are handed on in tasks of about this many seconds"
    )
    scene_window_s: float = Field(
        600.0, ge=0, description="video: a video longer than this is scene-split in windows of at most this many "
                                 "seconds, one task each, so one long video spreads over many workers (a cut is "
                                 "forced at each window edge); 0: never"
    )
    max_attempts: int = Field(5, ge=1, le=100)
    fuse_cpu_stages: bool = Field(
        True, description="image: consecutive model-free CPU stages (e.g. probe → resolution → phash → edges) run "
                          "as one pass per task on one read and one full decode of each file; video: consecutive "
                          "frame-sampled CPU stages (e.g. video_hash → dynamics → video_text) run as one pass per "
                          "task on one decode of each scene's frames; false: a task per stage"
    )
    export: ExportSpec | None = None
    pairs: PairsSpec | None = Field(None, description="pair: what the job mines (`curation pairs mine` writes it)")

    @model_validator(mode="after")
    def _stages_known_and_ordered(self) -> "JobSpec":
        errors = stage_errors(self.stages, self.modality)
        if self.modality == "pair" and self.pairs is None:
            errors.append("pairs: a pair-mining job needs its pairs section (submit it with `curation pairs mine`)")
        if self.modality != "pair" and self.source is None:
            errors.append("source: Field required")
        if self.modality != "pair" and self.pairs is not None:
            errors.append("pairs: only a pair-mining job (modality pair) has a pairs section")
        if 0 < self.scene_window_s < MIN_SCENE_WINDOW_S:
            errors.append(f"scene_window_s: 0 (never) or at least {MIN_SCENE_WINDOW_S:.0f} s, not {self.scene_window_s}")
        longest = max((float(s.params.get("max_scene_s", 60.0)) for s in self.stages if s.name == "scenes"), default=60.0)
        if 0 < self.scene_window_s < 2 * longest:
            errors.append(f"scene_window_s: must be at least twice the scenes stage's max_scene_s ({longest:g} s), "
                          "so a window never has the frames of a scene")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def view(self) -> str:
        """The SQL view the export predicate is written against."""
        return {"video": "curated_scenes", "pair": "curated_pairs"}.get(self.modality, "curated_images")

    def suffixes(self) -> tuple[str, ...]:
        if self.source.extensions:
            return tuple(s.lower() for s in self.source.extensions)
        return VIDEO_SUFFIXES if self.modality == "video" else IMAGE_SUFFIXES

    def stage_classes(self) -> list[type[Stage]]:
        return [get_stage(s.name) for s in self.stages]

    def stage_params(self, index: int) -> BaseModel:
        return get_stage(self.stages[index].name).Params.model_validate(self.stages[index].params)


def stage_errors(stages: list[StageSpec], modality: str | None) -> list[str]:
    """Every problem of the stage list: unknown stages, wrong modality, bad params, order, repeats."""
    errors: list[str] = []
    seen: list[str] = []
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        try:
            cls = get_stage(stage.name)
        except UnknownStage as exc:
            errors.append(f"{where}.name: {exc.args[0]}")
            continue
        if modality is not None and modality not in cls.modalities:
            errors.append(f"{where}.name: stage {stage.name!r} does not handle modality {modality!r}")
        try:
            cls.Params.model_validate(stage.params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                errors.append(f"{where}.params.{loc}: {err['msg']} (stage {stage.name!r})")
        for required in cls.requires:
            if required not in seen:
                errors.append(f"{where}.name: stage {stage.name!r} needs stage {required!r} earlier in the list")
        if cls.name in seen:
            errors.append(f"{where}.name: stage {cls.name!r} is listed twice")
        seen.append(cls.name)
    return errors


def _stage_errors_of_invalid(data: dict) -> list[str]:
    """When other fields fail, pydantic skips the whole-spec check: run the stage checks on their own so
    that every bad field is named at once."""
    from pydantic import TypeAdapter

    try:
        stages = TypeAdapter(list[StageSpec]).validate_python(data.get("stages"))
    except ValidationError:
        return []  # the stage list's own shape errors are already reported
    modality = data.get("modality") if data.get("modality") in ("image", "video", "pair") else None
    return stage_errors(stages, modality)


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}" if not msg.startswith("stages[") else msg)
    return "\n".join(part for line in lines for part in line.split("; "))


def parse_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError("(spec): must be a YAML mapping with name, modality, source and stages")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        message = _format(exc)
        extra = [e for e in _stage_errors_of_invalid(data) if e not in message]
        raise SpecError("\n".join([message, *extra])) from None


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data)
