"""clip_text_score — how well each image's English caption matches the image: the cosine of the CLIP text
embedding of the caption with the CLIP image embedding (the CLIPScore idea; report §4.2 uses CLIP for
classification, the issue asks for an alignment score so a slice can drop captions that do not match their
image, e.g. ``WHERE clip_text_score > 0.2``). Range −1..1, higher is better; CLIP reads the first 77 tokens of
the caption (``caption_truncated`` when it is longer).

Stored in ``clip_text_results``: ``clip_text_score``, ``caption_truncated``, ``source_caption_sha256`` (the
caption scored: the view shows the score only while it matches the caption the job's ``caption`` config
made), ``model``, ``weights_sha256``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.captioning import text_sha256
from workers.clip import ClipParams
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem

CLIP_CONTEXT = 77  # tokens of CLIP's text tower, start and end tokens included

CLIP_TEXT_VIEW_COLUMNS = (
    ("CASE WHEN cts.source_caption_sha256 = encode(sha256(convert_to(cp.caption_en, 'UTF8')), 'hex')"
     " THEN cts.clip_text_score END AS clip_text_score"),)


@dataclass(frozen=True)
class ClipTextScore:
    clip_text_score: float
    caption_truncated: bool
    source_caption_sha256: str
    model: str
    weights_sha256: str


class ClipTextScoreStage(Stage[ClipParams, ClipTextScore]):
    name = "clip_text_score"
    version = "1"
    Params = ClipParams
    result_type = ClipTextScore
    result_table = "clip_text_results"
    view_columns = (ViewColumns("curated_images", "cts", CLIP_TEXT_VIEW_COLUMNS),)
    resources = Resources(cpus=1.0, memory_gb=2.0)
    batch_size = 32
    needs_image = True
    image_draft_size = 256  # CLIP looks at 224 px
    requires = ("caption",)

    @classmethod
    def models_for(cls, params) -> tuple[str, ...]:
        from models.clip import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.clip import load_clip

        self._clip = load_clip(self.params.model)

    def teardown(self) -> None:
        del self._clip

    def process(self, items: Sequence[StageItem]) -> list[ClipTextScore | ItemFailure]:
        captions = [item.prior["caption"].caption_en for item in items]
        images = self._clip.embed_images([item.image for item in items])
        texts = self._clip.embed_texts(captions)
        scores = np.sum(images * texts, axis=1)
        c = self._clip
        out: list[ClipTextScore | ItemFailure] = []
        for caption, score in zip(captions, scores):
            n_tokens = int(np.count_nonzero(np.asarray(c.tokenizer([caption], context_length=4 * CLIP_CONTEXT))))
            out.append(ClipTextScore(round(float(score), 6), n_tokens > CLIP_CONTEXT, text_sha256(caption), c.name,
                                     c.weights_sha256))
        return out
