"""pair_candidates — candidate editing pairs of an image (report §4.3, Figure 5 steps 2–3: "Similarity
Matching" by CLIP, DINOv2 and faces, and the per-cluster adaptive CLIP threshold).

Runs in a pair-mining job (``curation pairs mine``, ``docs/pairs.md``) on the image assets of the job's slice.
The runtime hands each image its ``Neighbourhood`` (``neighbour_input``): its k nearest neighbours by CLIP
and by DINOv2 through the pgvector HNSW indexes, within the mining job's slice, each with both cosine
similarities, its cluster and that cluster's adaptive threshold ``clip_thr``, and the neighbours' ``faces``
results (``member_requires``). This stage keeps the neighbours that pass the candidate floors and returns
them as ``CandidatePair``: the runtime stores each new pair as an asset of kind ``pair`` with its
``image_pairs`` row (every raw score) and hands the pairs to ``pair_verify`` in the same transaction.

Scores per pair (``image_pairs``): ``clip_sim`` and ``dino_sim`` (cosine, -1..1), ``face_sim`` (0..1,
``models.faces.face_similarity`` of the two single-face descriptors; NULL unless both images hold exactly
one face), ``clip_thr`` and ``cluster_id`` (see below), ``found_by`` (which kNN found it: clip, dino or
both). Per image (``pair_candidates_results``): neighbours seen, pairs kept, its cluster and threshold.

A pair is unordered: ``source`` is the lower asset id (a→b and b→a are one pair). Its ``clip_thr`` is the
threshold of the cluster both images share; when they fall in two clusters, the stricter (higher) of the
two, and ``cluster_id`` names that cluster; an image with no cluster has no threshold (NULL: the adaptive
CLIP rule cannot admit the pair; the DINO and face rules still can).

The floors (``min_clip_sim``, ``min_dino_sim``, ``min_face_sim``) only bound the verification work: a
neighbour goes on if it passes any of them. They change which pairs exist, so they are part of the
configuration; Table 1's thresholds are ``threshold_params``, applied by ``curated_pairs`` when it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.stage import ItemFailure, Neighbour, Resources, Stage, StageItem

# Table 1 of the report (§4.3); applied in SQL by curated_pairs, from the mining job's job_stages params
TABLE1 = {
    "dino_min_sim": 0.8, "dino_min_inliers": 300,
    "clip_min_sim": 0.8, "clip_min_inliers": 200, "adaptive_t": 0.15,
    "face_min_sim": 0.7,
    "exclude_dino_sim": 0.97, "exclude_dino_aligned_sim": 0.97, "exclude_face_below": 0.5,
    "sft_min_quality": 4.0, "sft_min_aesthetic": 2.0,
}


class PairCandidatesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mining_job: int | None = Field(None, description="the pair-mining job (set by `curation pairs mine`): "
                                   "candidates are a function of its slice, so they are keyed by it")
    k: int = Field(16, ge=1, le=1000, description="nearest neighbours per image, by CLIP and by DINOv2 each")
    ef_search: int = Field(100, ge=1, le=1000, description="hnsw.ef_search of the kNN queries (at least k)")
    max_scan_tuples: int = Field(20_000, ge=1_000, le=100_000_000, description="hnsw.max_scan_tuples: how far an "
                                 "iterative scan walks to find k neighbours in the slice (raise it for a slice "
                                 "that is a small part of the image job)")
    embeddings: list[str] = Field(["clip", "dino"], min_length=1, description="the kNN indexes: clip, dino")
    min_clip_sim: float = Field(0.8, ge=-1.0, le=1.0, description="candidate floor on CLIP cosine")
    min_dino_sim: float = Field(0.8, ge=-1.0, le=1.0, description="candidate floor on DINOv2 cosine")
    min_face_sim: float = Field(0.7, ge=0.0, le=1.0, description="candidate floor on face_sim (single faces)")
    pairs_per_task: int = Field(32, ge=1, le=10_000, description="pairs per task of the next stage")
    # Table 1 (threshold params: read by curated_pairs, never part of the configuration)
    dino_min_sim: float = TABLE1["dino_min_sim"]
    dino_min_inliers: int = TABLE1["dino_min_inliers"]
    clip_min_sim: float = TABLE1["clip_min_sim"]
    clip_min_inliers: int = TABLE1["clip_min_inliers"]
    adaptive_t: float = Field(TABLE1["adaptive_t"], ge=0.0, le=1.0, description="T of clip_sim > (1-T)·clip_thr + T")
    face_min_sim: float = TABLE1["face_min_sim"]
    exclude_dino_sim: float = TABLE1["exclude_dino_sim"]
    exclude_dino_aligned_sim: float = TABLE1["exclude_dino_aligned_sim"]
    exclude_face_below: float = TABLE1["exclude_face_below"]
    sft_min_quality: float = TABLE1["sft_min_quality"]
    sft_min_aesthetic: float = TABLE1["sft_min_aesthetic"]


@dataclass(frozen=True)
class CandidatePair:
    """One unordered pair (``source`` < ``target``) and its candidate scores (an ``image_pairs`` row)."""

    source: int
    target: int
    found_by: str  # clip | dino | both
    clip_sim: float | None
    dino_sim: float | None
    clip_thr: float | None
    cluster_id: int | None
    face_sim: float | None


@dataclass(frozen=True)
class PairCandidatesResult:
    n_neighbours: int
    n_pairs: int
    cluster_id: int | None
    clip_thr: float | None
    pairs: list[CandidatePair] = field(default_factory=list)  # ``pairs_field``: not a column


def face_descriptor(faces: Any) -> Any:
    """The single-face descriptor of a ``faces`` result, or None (no result, no face, several faces)."""
    if faces is None or getattr(faces, "face_count", 0) != 1:
        return None
    return getattr(faces, "embedding", None)


def pair_threshold(a: tuple[int | None, float | None], b: tuple[int | None, float | None]
                   ) -> tuple[int | None, float | None]:
    """(cluster, clip_thr) of a pair from its members' (cluster, clip_thr): the shared cluster's, else the
    stricter of the two known thresholds."""
    known = [m for m in (a, b) if m[1] is not None]
    if not known:
        return (a[0] if a[0] is not None else b[0]), None
    return max(known, key=lambda m: m[1])


class PairCandidatesStage(Stage[PairCandidatesParams, PairCandidatesResult]):
    """Candidate editing pairs from an image's CLIP and DINOv2 neighbours (report §4.3)."""

    name = "pair_candidates"
    version = "1"
    modalities = frozenset({"pair"})
    Params = PairCandidatesParams
    result_type = PairCandidatesResult
    result_table = "pair_candidates_results"
    resources = Resources(cpus=1.0, memory_gb=1.0)
    batch_size = 64
    neighbour_input = True
    member_requires = ("faces",)  # optional here: a neighbour without a faces result has no face_sim
    pairs_field = "pairs"
    reuse_by_content = False  # a byte-identical copy has other neighbours
    threshold_params = frozenset(TABLE1)
    run_params = frozenset({"timeout_s", "pairs_per_task", "ef_search", "max_scan_tuples"})

    def process(self, items: Sequence[StageItem]) -> list[PairCandidatesResult | ItemFailure]:
        return [self._one(item) for item in items]

    def _one(self, item: StageItem) -> PairCandidatesResult | ItemFailure:
        hood = item.neighbours
        if hood is None:
            return ItemFailure("missing_neighbours", f"asset {item.asset_id}: no neighbourhood was gathered")
        p = self.params
        mine = face_descriptor(hood.prior.get("faces"))
        pairs = []
        for n in hood.neighbours:
            face_sim = self._face_sim(mine, n)
            keep = ((n.clip_sim is not None and n.clip_sim >= p.min_clip_sim)
                    or (n.dino_sim is not None and n.dino_sim >= p.min_dino_sim)
                    or (face_sim is not None and face_sim >= p.min_face_sim))
            if not keep:
                continue
            cluster, thr = pair_threshold((hood.cluster_id, hood.clip_thr), (n.cluster_id, n.clip_thr))
            pairs.append(CandidatePair(
                source=min(item.asset_id, n.asset_id), target=max(item.asset_id, n.asset_id), found_by=n.found_by,
                clip_sim=_round(n.clip_sim), dino_sim=_round(n.dino_sim), clip_thr=_round(thr), cluster_id=cluster,
                face_sim=_round(face_sim)))
        return PairCandidatesResult(n_neighbours=len(hood.neighbours), n_pairs=len(pairs), cluster_id=hood.cluster_id,
                                    clip_thr=_round(hood.clip_thr), pairs=pairs)

    @staticmethod
    def _face_sim(mine: Any, n: Neighbour) -> float | None:
        theirs = face_descriptor(n.prior.get("faces"))
        if mine is None or theirs is None:
            return None
        from models.faces import face_similarity

        return float(face_similarity(mine, theirs))


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)
