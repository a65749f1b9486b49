"""domain / video_domain — the VLM domain class of an image or a scene (report §4.6, "VLM Domain
Organization": Qwen2.5-VL-32B-Instruct classified images and videos into the same domains with one
standardised prompt; the SFT-soup model averages models fine-tuned per domain).

The prompt is the report's ``PROMPT_TEMPLATE`` with its ``CATEGORY_LIST``, ``{media_type}`` = image or
video (a scene's ``frames`` evenly spaced frames go in one prompt). The answer is parsed to one of the 10
classes (``parse_domain``): a class name, with or without its number, case, quotes or a final full stop.
Anything else is ``other`` with ``domain_unparsed`` set (the model answered outside the list); the answer
as generated is ``domain_answer``. On the vLLM backend the answer is constrained to the class names
(guided choice). Stored in ``domain_results`` with ``backend``, ``model``, ``weights_sha256``,
``prompt_version``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image
from pydantic import Field

from curation.video import DecodedFrame
from workers.captioning import (
    CaptionerParams,
    CaptionerStage,
    prompt_version,
    scene_frame_groups,
)
from workers.columns import ViewColumns
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import ItemFailure, Resources, StageItem

# report §4.6, verbatim
CATEGORY_LIST = """
1) animals
2) architecture
3) art
4) cartoons
5) food
6) interiors
7) nature
8) people
9) tech
10) other
"""

PROMPT_TEMPLATE = """
You are a professional {media_type} classifier. You are given a {media_type}.
Your task is to return one of the following classes this {media_type} relates to the most.
Choose one class from the following classes:
{CATEGORY_LIST}
Return only the name of class.
""".strip()

CLASSES = tuple(line.split(") ", 1)[1] for line in CATEGORY_LIST.strip().splitlines())
_NUMBERED = re.compile(r"^(\d{1,2})\s*[).:]?\s*(.*)$")


def domain_prompt(media_type: str) -> str:
    return PROMPT_TEMPLATE.format(media_type=media_type, CATEGORY_LIST=CATEGORY_LIST)


def parse_domain(answer: str) -> tuple[str, bool]:
    """(class, unparsed): the class the answer names, or ("other", True) when it names none of them."""
    text = answer.strip().strip("\"'`*").strip().lower()
    if text.startswith("class:"):
        text = text[len("class:"):].strip()
    text = text.rstrip(".!").strip().strip("\"'`*").strip()
    numbered = _NUMBERED.match(text)
    if numbered:
        number, rest = int(numbered.group(1)), numbered.group(2).strip()
        if 1 <= number <= len(CLASSES) and rest in ("", CLASSES[number - 1]):
            return CLASSES[number - 1], False
        return "other", True  # a number outside the list, or one that contradicts the name
    if text in CLASSES:
        return text, False
    return "other", True


DOMAIN_VIEW_COLUMNS = ("dm.domain", "dm.domain_unparsed")


class DomainParams(CaptionerParams):
    max_tokens: int = Field(8, ge=1, le=256, description="generated tokens at most (a class name)")


class VideoDomainParams(DomainParams, FrameSampledParams):
    frames: int = sampled_frames(8)


@dataclass(frozen=True)
class DomainResult:
    domain: str
    domain_unparsed: bool
    domain_answer: str
    answer_tokens: int
    frames_sampled: int
    backend: str
    model: str
    weights_sha256: str
    prompt_version: str


class DomainModel(CaptionerStage[DomainParams, DomainResult]):
    result_type = DomainResult
    result_table = "domain_results"
    resources = Resources(cpus=1.0, memory_gb=4.0)
    medium = "image"

    def classify(self, groups: list[list]) -> list[DomainResult | ItemFailure]:
        from models.captioner import Request

        prompt = domain_prompt(self.medium)
        version = prompt_version("domain", prompt)
        c = self.captioner
        out: list[DomainResult | ItemFailure] = []
        for group, got in zip(groups, self.ask([Request(prompt, tuple(g), choices=CLASSES) for g in groups])):
            if isinstance(got, ItemFailure):
                out.append(got)
                continue
            domain, unparsed = parse_domain(got.text)
            out.append(DomainResult(domain, unparsed, got.text, got.completion_tokens, len(group), c.backend, c.name,
                                    c.weights, version))
        return out


class DomainStage(DomainModel):
    name = "domain"
    version = "1"
    Params = DomainParams
    view_columns = (ViewColumns("curated_images", "dm", DOMAIN_VIEW_COLUMNS),)
    batch_size = 8
    needs_image = True
    image_draft_size = 512
    requires = ("probe",)

    def process(self, items: Sequence[StageItem]) -> list[DomainResult | ItemFailure]:
        return self.classify([[item.image] for item in items])


class VideoDomainStage(DomainModel, FrameSampledStage[VideoDomainParams, DomainResult]):
    name = "video_domain"
    version = "1"
    Params = VideoDomainParams
    view_columns = (ViewColumns("curated_scenes", "dm", DOMAIN_VIEW_COLUMNS),)
    batch_size = 4
    frame_decode: ClassVar[dict] = {"short_side": 448}
    medium = "video"

    def score_frames(self, frames: list[DecodedFrame]) -> DomainResult:
        (result,) = self.classify([[Image.fromarray(f.pixels) for f in frames]])
        if isinstance(result, ItemFailure):
            raise RuntimeError(result.message)  # noqa: TRY004 - score_frames returns a result; process() keeps the class
        return result

    def process(self, items: Sequence[StageItem]) -> list[DomainResult | ItemFailure]:
        out, groups, where = scene_frame_groups(self, items)
        for i, result in zip(where, self.classify(groups) if groups else []):
            out[i] = result
        return out
