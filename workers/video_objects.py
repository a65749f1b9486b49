"""video_objects — objects in a scene (report §4.4: "The YOLOv8 model, trained on the OpenImagesV7
dataset, detects objects in five frames per scene"). Same detector, parameters, columns and table
(``object_results``) as the image ``objects`` stage: ``labels`` is the union over the 5 evenly spaced
frames, ``n_detections`` and ``max_conf`` the means over them, every box kept with its frame index."""

from __future__ import annotations

from curation.video import DecodedFrame
from workers.columns import ViewColumns
from workers.objects import ObjectModel, ObjectScores, ObjectsParams, object_scores
from workers.scene_frames import FrameSampledParams, FrameSampledStage, sampled_frames
from workers.stage import Resources

FRAMES = 5  # report §4.4


class VideoObjectsParams(ObjectsParams, FrameSampledParams):
    frames: int = sampled_frames(FRAMES)


class VideoObjectsStage(ObjectModel, FrameSampledStage[VideoObjectsParams, ObjectScores]):
    name = "video_objects"
    view_columns = (ViewColumns("curated_scenes", "ob", ("ob.labels AS object_labels", "ob.n_detections AS n_objects")),)
    version = "1"
    Params = VideoObjectsParams
    resources = Resources(cpus=1.0, memory_gb=1.5)
    batch_size = 8
    frame_decode = {"short_side": 640}

    def score_frames(self, frames: list[DecodedFrame]) -> ObjectScores:
        p = self.params
        found = self._yolo.detect([f.pixels for f in frames], conf=p.conf, iou=p.iou, max_det=p.max_det)
        return object_scores(found, self._yolo.name, self._yolo.weights_sha256)
