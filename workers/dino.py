"""dino — DINOv2 image embeddings in pgvector (report §4.3, editing pairs: "DINO Score [74]: computed visual
similarity using DINOv2 features"; candidates are each image's nearest neighbours by CLIP and by DINOv2).

Scores: ``embedding`` (pgvector ``vector``, the L2-normalised CLS embedding of ``models.dino``: 384-d for
``dinov2-small``, 768 for ``dinov2-base``, 1024 for ``dinov2-large``; ``dino_sim`` of two images is the dot
product, -1..1). Provenance: ``model`` and ``weights_sha256``.

The rows go to ``dino_results`` (``clip_results`` holds CLIP's classes beside its embeddings, so it cannot
take them). After the rows are written the runtime creates this model's HNSW index (cosine) over
``dino_results`` if it does not exist yet (``curation.embeddings``), so a k-nearest-neighbour query is an
index scan. Nothing is shown in the curated views: an embedding is for search, not for slicing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import Embedding
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MODEL = "dinov2-base"


class DinoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, pattern=r"^[a-z0-9-]+$", description="registry name of the DINOv2 model")

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.dino import FAMILY, TINY
        from models.registry import check_model

        return check_model(v, FAMILY, tiny=TINY, what="DINOv2 model")


@dataclass(frozen=True)
class DinoScores:
    embedding: Embedding  # numpy float32 vector, L2-normalised
    model: str
    weights_sha256: str


class DinoStage(Stage[DinoParams, DinoScores]):
    name = "dino"
    version = "1"
    result_type = DinoScores
    result_table = "dino_results"
    Params = DinoParams
    embedding_model_param = "model"
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 32
    needs_image = True
    image_draft_size = 256  # the processor resizes the short side to 256, then crops 224
    requires = ("probe",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.dino import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.dino import DinoEmbedder

        self._dino = DinoEmbedder(self.params.model)

    def teardown(self) -> None:
        del self._dino

    def process(self, items: Sequence[StageItem]) -> list[DinoScores | ItemFailure]:
        embeddings = self._dino.embed([item.image for item in items])
        return [DinoScores(embedding=e, model=self._dino.name, weights_sha256=self._dino.weights_sha256)
                for e in embeddings]
