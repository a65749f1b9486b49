"""The Q-Align scoring method (report §4.2 and §4.4 [67]) on a vision-language model.

Q-Align asks the model to rate the image in words and reads, at the position of the answer, the
probabilities of the five rating levels: the prompt ends with the start of the answer ("The quality of
the image is") and the score is ``softmax(logits of [excellent, good, fair, poor, bad]) · [5, 4, 3, 2, 1]``,
a number from 1 (bad) to 5 (excellent), higher is better. Two tasks, as in Q-Align: ``quality``
(technical) and ``aesthetics``; a video is rated from its sampled frames given together ("this video").

The VLM is Qwen2.5-VL through ``models.qwen_vl`` (the transformers class; Q-Align's own mPLUG-Owl2
checkpoint needs remote code and is not loaded). The rating words are read as the first token of
" excellent" etc. in the model's tokenizer; five distinct tokens are required.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.qwen_vl import QwenVL

LEVELS = ("excellent", "good", "fair", "poor", "bad")
LEVEL_SCORES = (5.0, 4.0, 3.0, 2.0, 1.0)
TASKS = ("quality", "aesthetics")


def prompt_words(task: str, medium: str) -> tuple[str, str]:
    """(question, start of the answer) of the Q-Align prompt."""
    if task not in TASKS or medium not in ("image", "video"):
        raise ValueError(f"Q-Align task must be one of {TASKS} and medium image or video, not {task!r}/{medium!r}")
    return f"How would you rate the {task} of this {medium}?", f"The {task} of the {medium} is"


def expected_score(level_logits: np.ndarray) -> np.ndarray:
    """(N, 5) logits of the five levels, in LEVELS order → (N,) scores in [1, 5]."""
    z = level_logits - level_logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p @ np.array(LEVEL_SCORES)


@dataclass
class QAlignScorer:
    vlm: QwenVL
    max_pixels: int = 448 * 448  # per image or frame: 256 visual tokens after Qwen's 2x2 merge

    def __post_init__(self) -> None:
        tok = self.vlm.tokenizer
        self.level_ids = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in LEVELS]
        if len(set(self.level_ids)) != len(LEVELS):
            raise ValueError(f"{self.vlm.name}: the rating words do not map to distinct tokens ({self.level_ids})")

    @property
    def name(self) -> str:
        return self.vlm.name

    def _prompt(self, n_images: int, task: str, medium: str) -> str:
        question, answer = prompt_words(task, medium)
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        chat = self.vlm.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
        return chat + answer

    def score(self, groups: list[list], task: str, medium: str = "image") -> list[float]:
        """One score per group of PIL images (one image, or the frames of one video)."""
        import torch

        texts = [self._prompt(len(g), task, medium) for g in groups]
        images = [img.convert("RGB") for g in groups for img in g]
        least = self.vlm.processor.image_processor.size["shortest_edge"]  # Qwen's sizes are pixel counts
        inputs = self.vlm.processor(text=texts, images=images, return_tensors="pt", padding=True,
                                    images_kwargs={"size": {"shortest_edge": min(least, self.max_pixels),
                                                            "longest_edge": self.max_pixels}})
        inputs = {k: v.to(self.vlm.device) for k, v in inputs.items()}
        with torch.no_grad():
            logits = self.vlm.model(**inputs).logits
        mask = inputs["attention_mask"]
        if self.vlm.processor.tokenizer.padding_side == "left":
            last = torch.full((logits.shape[0],), logits.shape[1] - 1, device=logits.device)
        else:
            last = mask.sum(dim=1) - 1
        rows = logits[torch.arange(logits.shape[0], device=logits.device), last][:, self.level_ids]
        return [float(s) for s in expected_score(rows.float().cpu().numpy())]
