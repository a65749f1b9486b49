"""dover — DOVER technical and aesthetic video quality of a scene and their weighted sum (report §4.4:
"The DOVER model is employed to provide separate scores for technical quality (e.g., sharpness, noise)
and aesthetic quality (e.g., composition, color). An overall quality score is derived as a weighted
sum of these two components"), through ``models.dover``.

The scene is decoded once, in order; of its ``n`` frames, three 32-frame clips at stride 2 (one per
third) become the technical view — 7x7 fragments of 32x32 *native-resolution* patches — and 32 frames
(one per 32nd) the aesthetic view, resized to 224x224. Frames are turned into their 224x224 views as
they are decoded, so memory stays small at any resolution.

Scores (0..1, higher is better): ``dover_technical`` = sigmoid((raw − 0.1107) / 0.07355),
``dover_aesthetic`` = sigmoid((raw + 0.08285) / 0.03774), ``dover_overall`` = sigmoid(0.6104·t + 0.3896·a)
— the authors' normalisation and weights; the raw head outputs are kept (``technical_raw``,
``aesthetic_raw``). ``frames_sampled``: the distinct frames the two views use (up to 128 = 96 + 32;
fewer in a short scene, where the clips wrap around).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.media import MediaError
from curation.video import DEFAULT_VIDEO_TIMEOUT_S, iter_frames
from workers.columns import ViewColumns
from workers.stage import ItemFailure, Resources, Stage, StageItem


class DoverParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("dover", description="registry name of the DOVER weights")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from models.dover import REAL, TINY
        from models.registry import check_model

        return check_model(v, "vqa", names=(REAL,), tiny=TINY, what="DOVER model")


@dataclass(frozen=True)
class DoverResult:
    dover_technical: float
    dover_aesthetic: float
    dover_overall: float
    technical_raw: float
    aesthetic_raw: float
    frames_sampled: int
    model: str
    weights_sha256: str


class DoverStage(Stage[DoverParams, DoverResult]):
    name = "dover"
    view_columns = (ViewColumns("curated_scenes", "dv", ("dv.dover_technical", "dv.dover_aesthetic", "dv.dover_overall")),)
    version = "1"
    modalities = frozenset({"video"})
    result_type = DoverResult
    result_table = "dover_results"
    Params = DoverParams
    resources = Resources(cpus=1.0, memory_gb=3.0)
    batch_size = 1
    max_runtime_s = 3600.0
    needs_path = True

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.dover import TINY

        return () if params.model == TINY else (params.model,)

    def setup(self) -> None:
        from models.dover import load_dover

        self._dover = load_dover(self.params.model)

    def teardown(self) -> None:
        del self._dover

    def process(self, items: Sequence[StageItem]) -> list[DoverResult | ItemFailure]:
        return [self._score(item) for item in items]

    def _score(self, item: StageItem) -> DoverResult | ItemFailure:
        from models.dover import aesthetic_frame_indices, aesthetic_view, fragments, technical_frame_indices

        what = f"asset {item.asset_id} ({item.uri})"
        if item.span is None:
            return ItemFailure("not_a_scene", f"{what}: dover runs on scenes (run the scenes stage first)")
        n = max(1, item.span.end_frame - item.span.start_frame)
        tech_idx, aes_idx = technical_frame_indices(n), aesthetic_frame_indices(n)
        want_t, want_a = set(tech_idx), set(aes_idx)
        tech: dict[int, np.ndarray] = {}
        aes: dict[int, np.ndarray] = {}
        last = None
        try:
            for f in iter_frames(item.path, start_s=item.span.start_s, end_s=item.span.end_s,
                                 timeout_s=self.params.timeout_s, what=what):
                if f.index in want_t:
                    tech[f.index] = fragments(f.pixels[None])[0]
                if f.index in want_a:
                    aes[f.index] = aesthetic_view(f.pixels[None])[0]
                last = f
                if f.index >= n - 1:
                    break
        except MediaError as exc:
            return ItemFailure(exc.error_class, str(exc))
        if last is None:
            return ItemFailure("corrupt_media", f"{what}: no frame decoded in the scene")
        # an index the stream did not deliver (fewer frames than the span says): the last frame
        last_t, last_a = fragments(last.pixels[None])[0], aesthetic_view(last.pixels[None])[0]
        tech_views = np.stack([tech.get(i, last_t) for i in tech_idx])
        aes_views = np.stack([aes.get(i, last_a) for i in aes_idx])
        s = self._dover.score(tech_views, aes_views)
        d = self._dover
        return DoverResult(round(s.technical, 6), round(s.aesthetic, 6), round(s.overall, 6), round(s.technical_raw, 6),
                           round(s.aesthetic_raw, 6), len(want_t | want_a), d.name, d.weights_sha256)
