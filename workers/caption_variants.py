"""caption_variants — an LLM rewrites each image's long caption into five lengths, each in English and in
Russian (report §4.6: "the Qwen3-32B model rewrote this description into several variations: very long,
long, medium length, short, and very short ... requesting the language model to return descriptions in both
languages simultaneously for consistency").

Input: the English caption of the job's ``caption`` stage (cleaned). One text-only request per length
(``LENGTHS``, word targets ours: the report gives none) through the same backends as the captions; the answer
is read as ``EN: …`` / ``RU: …`` lines and each part cleaned as a caption (``workers.caption_text``). A length
whose answer has no such lines leaves both columns NULL and counts in ``unparsed``. Stored in
``caption_variant_results``: ``en_<length>``, ``ru_<length>``, ``answers`` (the raw text per length, JSONB),
``generated_tokens``, ``source_caption_sha256`` (the caption rewritten), provenance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from workers.caption_text import clean_caption
from workers.captioning import (
    CaptionerParams,
    CaptionerStage,
    prompt_version,
    text_sha256,
)
from workers.stage import ItemFailure, Resources, StageItem

DEFAULT_LLM = "qwen2.5-vl-32b-instruct"  # the report's Qwen3-32B is served through backend openai/vllm

LENGTHS = {  # name -> what the prompt asks for
    "very_long": "a very long description (150 to 250 words) that keeps every detail",
    "long": "a long description (80 to 120 words)",
    "medium": "a medium-length description (40 to 60 words)",
    "short": "a short description (15 to 25 words)",
    "very_short": "a very short description (5 to 10 words)",
}

PROMPT = ("Rewrite the following image description as {length}. Keep only what the description says, add "
          "nothing, and write it as a person would. Return it in English and in Russian, in exactly this format:\n"
          "EN: <the English description>\nRU: <the Russian description>\n\nDescription: {caption}")

_PART = re.compile(r"^\s*\**(EN|RU)\**\s*[:：]\s*(.*?)\s*(?=^\s*\**(?:EN|RU)\**\s*[:：]|\Z)", re.MULTILINE | re.DOTALL | re.IGNORECASE)


def parse_bilingual(answer: str) -> tuple[str, str] | None:
    """(English, Russian) of an ``EN: … / RU: …`` answer, or None when either part is missing."""
    parts = {m.group(1).upper(): m.group(2).strip() for m in _PART.finditer(answer)}
    if parts.get("EN") and parts.get("RU"):
        return parts["EN"], parts["RU"]
    return None


class CaptionVariantsParams(CaptionerParams):
    model: str = Field(DEFAULT_LLM, min_length=1, description="the rewriting LLM: registry name, folder or served name")
    prompt: str = Field(PROMPT, min_length=1, description="with {length} and {caption}")


@dataclass(frozen=True)
class CaptionVariants:
    en_very_long: str | None
    en_long: str | None
    en_medium: str | None
    en_short: str | None
    en_very_short: str | None
    ru_very_long: str | None
    ru_long: str | None
    ru_medium: str | None
    ru_short: str | None
    ru_very_short: str | None
    unparsed: int
    answers: dict
    generated_tokens: int
    source_caption_sha256: str
    backend: str
    model: str
    weights_sha256: str
    prompt_version: str


class CaptionVariantsStage(CaptionerStage[CaptionVariantsParams, CaptionVariants]):
    name = "caption_variants"
    version = "1"
    Params = CaptionVariantsParams
    result_type = CaptionVariants
    result_table = "caption_variant_results"
    resources = Resources(cpus=1.0, memory_gb=4.0)
    batch_size = 4
    requires = ("caption",)
    source = "caption"

    def process(self, items: Sequence[StageItem]) -> list[CaptionVariants | ItemFailure]:
        from models.captioner import Request

        out: list[CaptionVariants | ItemFailure | None] = []
        requests, where = [], []
        for item in items:
            caption = item.prior[self.source].caption_en
            if not caption:
                out.append(ItemFailure("empty_caption", f"asset {item.asset_id}: its English caption is empty "
                                                        "after cleaning; nothing to rewrite"))
                continue
            where.append(len(out))
            out.append(None)
            requests += [Request(self.params.prompt.format(length=want, caption=caption)) for want in LENGTHS.values()]
        answers = self.ask(requests)
        version = prompt_version("variants", self.params.prompt, *LENGTHS.values())
        c = self.captioner
        for k, i in enumerate(where):
            got = answers[k * len(LENGTHS):(k + 1) * len(LENGTHS)]
            failed = next((g for g in got if isinstance(g, ItemFailure)), None)
            if failed is not None:
                out[i] = failed
                continue
            fields: dict = {}
            unparsed = 0
            for name, answer in zip(LENGTHS, got):
                both = parse_bilingual(answer.text)
                unparsed += both is None
                fields[f"en_{name}"] = clean_caption(both[0], "en") if both else None
                fields[f"ru_{name}"] = clean_caption(both[1], "ru") if both else None
            out[i] = CaptionVariants(
                **fields, unparsed=unparsed, answers={n: a.text for n, a in zip(LENGTHS, got)},
                generated_tokens=sum(a.completion_tokens for a in got),
                source_caption_sha256=text_sha256(items[i].prior[self.source].caption_en),
                backend=c.backend, model=c.name, weights_sha256=c.weights, prompt_version=version)
        return out  # type: ignore[return-value]


class VideoCaptionVariantsStage(CaptionVariantsStage):
    """The same rewriting of a scene's ``video_caption`` (report §4.6: "multiple caption variants of
    differing lengths" for the videos)."""

    name = "video_caption_variants"
    modalities = frozenset({"video"})
    requires = ("video_caption",)
    source = "video_caption"
