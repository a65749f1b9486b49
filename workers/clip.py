"""clip — CLIP image embeddings in pgvector and zero-shot classes (report §4.2: "a CLIP-based classifier"
for location, style, main subject and place type; the embeddings also serve similarity search and
editing-pair mining).

Scores: ``embedding`` (pgvector ``vector``, L2-normalised, the model's dimension: 512 for
``clip-vit-b-32``), and for each taxonomy of ``models/data/clip_taxonomy.yaml`` the winning class and
its softmax probability (0..1): ``location``, ``style``, ``main_subject``, ``place_type`` (+ ``*_p``).
Provenance: ``model``, ``weights_sha256`` and ``taxonomy_sha256`` (the prompt file's digest).

After the rows are written, an HNSW index (cosine) over this model's embeddings is created if it does
not exist yet (``curation.embeddings``), so ``curation similar ASSET`` is an index scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import Embedding, ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_MODEL = "clip-vit-b-32"
TAXONOMIES = ("location", "style", "main_subject", "place_type")


CLIP_VIEW_COLUMNS = ("cl.location", "cl.location_p", "cl.style", "cl.style_p", "cl.main_subject",
                     "cl.main_subject_p", "cl.place_type", "cl.place_type_p")  # the zero-shot classes shown in both curated views


class ClipParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, pattern=r"^[a-z0-9-]+$", description="registry name of the CLIP model")

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.clip import ARCHITECTURE, TINY
        from models.registry import refuse_tiny

        if v not in ARCHITECTURE:
            raise ValueError(f"unknown CLIP model {v!r}; one of {', '.join(m for m in ARCHITECTURE if m != TINY)}")
        if v == TINY:
            refuse_tiny(v, ValueError)
        return v


@dataclass(frozen=True)
class ClipScores:
    embedding: Embedding  # numpy float32 vector, L2-normalised
    location: str
    location_p: float
    style: str
    style_p: float
    main_subject: str
    main_subject_p: float
    place_type: str
    place_type_p: float
    model: str
    weights_sha256: str
    taxonomy_sha256: str


def clip_scores(clip, taxonomies, taxonomy_sha: str, embeddings: np.ndarray) -> list[ClipScores]:
    """Scores for rows of normalised embeddings (images, or scenes' mean frame embeddings)."""
    from models.clip import classify

    by_name = {t.name: classify(embeddings, t) for t in taxonomies}
    out = []
    for i, emb in enumerate(embeddings):
        fields: dict[str, Any] = {}
        for name in TAXONOMIES:
            label, p = by_name[name][i]
            fields[name], fields[f"{name}_p"] = label, round(p, 6)
        out.append(ClipScores(embedding=emb.astype(np.float32), model=clip.name, weights_sha256=clip.weights_sha256,
                              taxonomy_sha256=taxonomy_sha, **fields))
    return out


class ClipModelStage(Stage[ClipParams, ClipScores]):
    """What the image and the video CLIP stages share: the model named in the params, loaded once."""

    Params = ClipParams
    result_type = ClipScores
    result_table = "clip_results"
    embedding_model_param = "model"

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.clip import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.clip import load_clip, load_taxonomies

        self._clip = load_clip(self.params.model)
        self._taxonomies, self._taxonomy_sha = load_taxonomies(self._clip)

    def teardown(self) -> None:
        del self._clip, self._taxonomies


class ClipStage(ClipModelStage):
    name = "clip"
    view_columns = (ViewColumns("curated_images", "cl", CLIP_VIEW_COLUMNS),)
    version = "1"
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 32
    needs_image = True
    image_draft_size = 256  # CLIP looks at 224 px
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[ClipScores | ItemFailure]:
        embeddings = self._clip.embed_images([item.image for item in items])
        return clip_scores(self._clip, self._taxonomies, self._taxonomy_sha, embeddings)
