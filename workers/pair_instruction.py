"""pair_instruction — the editing instruction that turns a mined pair's source image into its target (report
§4.3, last step of Figure 5: "for the remaining pairs, a VLM generates the editing instruction"; §6.3 trains
on them as the caption of an instruct-editing sample).

Input: a pair asset (``pair_input``): both images, decoded upright by the runtime, go to the captioner in
one request — the source first, then the target — with a prompt that asks for one imperative instruction.
The answer is cleaned like a caption (``workers.caption_text``: intro phrases such as "The instruction is"
and sentences in another script removed) and a leading "Instruction:" label is dropped. Stored in
``pair_instruction_results``: ``instruction`` (cleaned), ``instruction_raw`` (as generated),
``instruction_tokens``, provenance: ``backend``, ``model``, ``weights_sha256`` (``models.captioner``
identity) and ``prompt_version`` (a digest of the prompt). The backend, model, prompt and sampling are
params, so an instruction made by another model or prompt is another configuration.

Which pairs get an instruction: every pair the job hands this stage — the mining job runs it after
``pair_verify`` on the pairs that stage keeps (its cheap gate); Table 1's thresholds themselves are applied
when ``curated_pairs`` is read, so an instruction may exist for a pair a stricter slice leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from workers.caption_text import clean_caption
from workers.captioning import CaptionerParams, CaptionerStage, prompt_version
from workers.stage import ItemFailure, Resources, StageItem

PROMPT = ("The first image is the source and the second image is the result of editing it. Write the editing "
          "instruction that turns the first image into the second, as one short imperative sentence a person "
          "would give an image editor (for example: \"Add a red umbrella in the man's left hand.\"). Describe "
          "only what changed. Answer with the instruction alone.")

_LABEL = re.compile(r"^\s*\**\s*(?:edit(?:ing)?\s+)?instruction\s*\**\s*[:：]\s*\**\s*", re.IGNORECASE)


def clean_instruction(text: str) -> str:
    """The instruction as stored: quotes and an "Instruction:" label removed, then cleaned as a caption."""
    text = _LABEL.sub("", text.strip()).strip().strip("\"'“”").strip()
    return clean_caption(text, "en")


class PairInstructionParams(CaptionerParams):
    prompt: str = Field(PROMPT, min_length=1, description="asks for the instruction; the source and the target "
                                                          "image come before it, in that order")
    max_tokens: int = Field(96, ge=1, le=4096, description="generated tokens at most (one sentence)")


@dataclass(frozen=True)
class PairInstructionResult:
    instruction: str
    instruction_raw: str
    instruction_tokens: int
    backend: str
    model: str
    weights_sha256: str
    prompt_version: str


class PairInstructionStage(CaptionerStage[PairInstructionParams, PairInstructionResult]):
    name = "pair_instruction"
    version = "1"
    Params = PairInstructionParams
    modalities = frozenset({"pair"})
    result_type = PairInstructionResult
    result_table = "pair_instruction_results"
    resources = Resources(cpus=1.0, memory_gb=4.0)
    batch_size = 8
    pair_input: ClassVar[bool] = True

    def process(self, items: Sequence[StageItem]) -> list[PairInstructionResult | ItemFailure]:
        from models.captioner import Request

        prompt = self.params.prompt
        requests = [Request(prompt, (item.pair.source.image, item.pair.target.image)) for item in items]
        version = prompt_version(self.name, prompt)
        c = self.captioner
        out: list[PairInstructionResult | ItemFailure] = []
        for got in self.ask(requests):
            if isinstance(got, ItemFailure):
                out.append(got)
                continue
            out.append(PairInstructionResult(
                instruction=clean_instruction(got.text), instruction_raw=got.text,
                instruction_tokens=got.completion_tokens, backend=c.backend, model=c.name, weights_sha256=c.weights,
                prompt_version=version))
        return out
