"""video_objects — objects in a scene (report §4.4: "The YOLOv8 model, trained on the OpenImagesV7
dataset, detects objects in five frames per scene"). Same detector, parameters, columns and table
(``object_results``) as the image ``objects`` stage: ``labels`` is the union over the 5 evenly spaced
frames, ``n_detections`` and ``max_conf`` the means over them, every box kept with its frame index."""

from __future__ import annotations

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.objects import ObjectModel, ObjectScores, ObjectsParams, object_scores
from workers.scene_frames import scene_frames
from workers.stage import ItemFailure, Resources, Span, StageItem

FRAMES = 5  # report §4.4


class VideoObjectsParams(ObjectsParams):
    frames: int = Field(FRAMES, ge=1, le=64, description="evenly spaced frames per scene")
    timeout_s: float = Field(DEFAULT_VIDEO_TIMEOUT_S, gt=0)


class VideoObjectsStage(ObjectModel):
    view_columns = (ViewColumns("curated_scenes", "ob", ("ob.labels AS object_labels", "ob.n_detections AS n_objects")),)
    name = "video_objects"
    version = "1"
    modalities = frozenset({"video"})
    Params = VideoObjectsParams
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 8
    max_runtime_s = 3600.0
    needs_path = True

    def times(self, span: Span) -> list[float]:
        return evenly_spaced_times(span.start_s, span.end_s, self.params.frames)

    def process(self, items: Sequence[StageItem]) -> list[ObjectScores | ItemFailure]:
        self._ensure()
        p = self.params
        out: list[ObjectScores | ItemFailure] = []
        for item in items:
            frames = scene_frames(item, self.name, self.times, short_side=640, timeout_s=p.timeout_s)
            if isinstance(frames, ItemFailure):
                out.append(frames)
                continue
            found = self._yolo.detect([f.pixels for f in frames], conf=p.conf, iou=p.iou, max_det=p.max_det)
            out.append(object_scores(found, self._yolo.name, self._yolo.weights_sha256))
        return out
