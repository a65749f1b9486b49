"""caption — a detailed English caption of each image and, for images of at least 512² pixels, a Russian one
(report §4.2: synthetic English captions from a multimodal model; "Qwen2.5VL-32B generates Russian captions
for higher-resolution images (width * height ≥ 512²)"; §4.6: Qwen2.5-VL-32B-Instruct's long descriptions).

Post-processing per the report (``workers.caption_text``): intro phrases ("The image shows", …) removed,
sentences in another script dropped (Cyrillic / CJK in English, Latin / CJK in Russian), control characters
stripped. Stored per image (``caption_results``, shared with ``video_caption``):

- ``caption_en`` / ``caption_ru``: the cleaned captions (``caption_ru`` NULL below ``russian_min_pixels``);
- ``caption_en_raw`` / ``caption_ru_raw``: the model's text as generated;
- ``caption_en_tokens`` / ``caption_ru_tokens``: generated tokens (as the backend counts them);
- ``frames_sampled`` (1 for an image), provenance: ``backend``, ``model``, ``weights_sha256`` (the weights
  identity, ``models.captioner``) and ``prompt_version`` (a digest of the prompts).

The backend, model, prompts and sampling are params, so they are part of the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from workers.caption_text import clean_caption
from workers.captioning import CaptionerParams, CaptionerStage, prompt_version
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, StageItem

RUSSIAN_MIN_PIXELS = 512 * 512  # report §4.2

PROMPT_EN = ("Describe the image in detail: the main objects and characters, their colour, shape, size, texture, "
             "quantity and actions, any visible text, the spatial relationships of the objects, the background, "
             "the lighting and the visual style. Write plain English sentences.")
PROMPT_RU = ("Подробно опиши изображение на русском языке: главные объекты и персонажи, их цвет, форма, размер, "
             "фактура, количество и действия, видимый текст, расположение объектов, фон, освещение и стиль.")

CAPTION_VIEW_COLUMNS = ("cp.caption_en", "cp.caption_ru")


class CaptionParams(CaptionerParams):
    prompt_en: str = Field(PROMPT_EN, min_length=1, description="the English captioning prompt")
    prompt_ru: str = Field(PROMPT_RU, min_length=1, description="the Russian captioning prompt")
    russian_min_pixels: int | None = Field(RUSSIAN_MIN_PIXELS, ge=0,
                                           description="a Russian caption where width·height ≥ this (None: never)")


@dataclass(frozen=True)
class CaptionResult:
    caption_en: str
    caption_en_raw: str
    caption_en_tokens: int
    caption_ru: str | None
    caption_ru_raw: str | None
    caption_ru_tokens: int | None
    frames_sampled: int
    backend: str
    model: str
    weights_sha256: str
    prompt_version: str


class CaptionModel(CaptionerStage[CaptionParams, CaptionResult]):
    """What the image and the video caption stages share: the prompts and the assembly of a result."""

    result_type = CaptionResult
    result_table = "caption_results"
    resources = Resources(cpus=1.0, memory_gb=4.0)
    medium = "image"

    def prompts(self) -> tuple[str, str]:
        return self.params.prompt_en, self.params.prompt_ru

    def caption(self, groups: list[list], sizes: list[tuple[int, int] | None]) -> list[CaptionResult | ItemFailure]:
        """One result per group of PIL images (an image, or a scene's frames); ``sizes`` (width, height)
        decide the Russian caption."""
        from models.captioner import Request

        en, ru = self.prompts()
        limit = self.params.russian_min_pixels
        russian = [limit is not None and size is not None and size[0] * size[1] >= limit for size in sizes]
        requests = [Request(en, tuple(g)) for g in groups]
        requests += [Request(ru, tuple(g)) for g, want in zip(groups, russian) if want]
        answers = iter(self.ask(requests))
        english = [next(answers) for _ in groups]
        version = prompt_version(self.medium, en, ru)
        out: list[CaptionResult | ItemFailure] = []
        for group, got_en, want in zip(groups, english, russian):
            got_ru = next(answers) if want else None
            failed = next((g for g in (got_en, got_ru) if isinstance(g, ItemFailure)), None)
            if failed is not None:
                out.append(failed)
                continue
            c = self.captioner
            out.append(CaptionResult(
                caption_en=clean_caption(got_en.text, "en"), caption_en_raw=got_en.text,
                caption_en_tokens=got_en.completion_tokens,
                caption_ru=clean_caption(got_ru.text, "ru") if got_ru else None,
                caption_ru_raw=got_ru.text if got_ru else None,
                caption_ru_tokens=got_ru.completion_tokens if got_ru else None,
                frames_sampled=len(group), backend=c.backend, model=c.name, weights_sha256=c.weights,
                prompt_version=version))
        return out


class CaptionStage(CaptionModel):
    name = "caption"
    version = "1"
    Params = CaptionParams
    view_columns = (ViewColumns("curated_images", "cp", CAPTION_VIEW_COLUMNS),)
    batch_size = 8
    needs_image = True
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[CaptionResult | ItemFailure]:
        sizes = [(item.prior["probe"].width, item.prior["probe"].height) if "probe" in item.prior else item.image.size
                 for item in items]
        return self.caption([[item.image] for item in items], sizes)
