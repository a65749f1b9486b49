"""text — text regions (report §4.2 "Text Filtering": drop images with too many text boxes or too
much text area). Backends: ``craft`` — the report's CRAFT (``models/craft.py``, weights
``craft-mlt-25k``, pulled) — and ``ppocrv4`` (default), the PP-OCRv4 detector shipped offline in
rapidocr-onnxruntime. Both return word/line quadrilaterals.

Scores: ``text_boxes`` (number of detected text lines, >= 0) and ``text_area`` (sum of the boxes' areas
over the image area, 0..1). Provenance: ``model`` and ``weights_sha256``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["ppocrv4", "craft"] = "ppocrv4"
    craft_model: str = Field("craft-mlt-25k", description="CRAFT weights (registry name) for backend craft")

    @field_validator("craft_model")
    @classmethod
    def _craft_known(cls, v: str) -> str:
        from models.craft import TINY
        from models.registry import refuse_tiny

        if v == TINY:
            refuse_tiny(v, ValueError)
        if v != TINY and v != "craft-mlt-25k":
            raise ValueError(f"unknown CRAFT model {v!r}")
        return v


def text_models(params: TextParams) -> tuple[str, ...]:
    """Registry models a text backend loads (checked at submission)."""
    from models.craft import TINY

    if params.backend == "craft":
        return () if params.craft_model == TINY else (params.craft_model,)
    return ("ppocrv4-det",)


def load_backend(params: TextParams):
    """A detector with ``detect(rgb) -> [4x2 boxes]``, ``name`` and ``weights_sha256``."""
    if params.backend == "craft":
        from models.craft import load_craft

        return load_craft(params.craft_model)
    from models.ppocr import load_text_detector

    return load_text_detector()


@dataclass(frozen=True)
class TextScores:
    text_boxes: int
    text_area: float
    model: str
    weights_sha256: str


class TextStage(Stage[TextParams, TextScores]):
    name = "text"
    view_columns = (ViewColumns("curated_images", "tx", ("tx.text_boxes", "tx.text_area")),)
    version = "1"
    result_type = TextScores
    result_table = "text_results"
    Params = TextParams
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 16
    needs_image = True
    image_draft_size = 1024
    requires = ("probe",)
    models = ("ppocrv4-det",)

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        return text_models(params)

    def setup(self) -> None:
        self._detector = load_backend(self.params)

    def teardown(self) -> None:
        del self._detector

    def process(self, items: Sequence[StageItem]) -> list[TextScores | ItemFailure]:
        from models.ppocr import polygon_area

        out = []
        for item in items:
            rgb = np.asarray(item.image)
            boxes = self._detector.detect(rgb)
            area = sum(polygon_area(b) for b in boxes) / float(rgb.shape[0] * rgb.shape[1])
            out.append(TextScores(len(boxes), round(min(area, 1.0), 6), self._detector.name,
                                  self._detector.weights_sha256))
        return out
