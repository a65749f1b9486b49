"""SAM 2 automatic masks (report §4.2 [69]: "the SAM 2 model generates segmentation masks"), registry
family ``segmentation``, through the ``sam2`` package (``build_sam2`` + ``SAM2AutomaticMaskGenerator``).

- ``sam2.1-hiera-tiny`` / ``sam2.1-hiera-large``: the released SAM 2.1 checkpoints with their packaged
  configs (``configs/sam2.1/sam2.1_hiera_t.yaml`` / ``..._l.yaml``), loaded strictly.
- ``sam2-tiny-random``: the same ``SAM2Base`` class from the Hiera-T config cut to 5 blocks and a
  512 px input, random weights — tests only (``CURATION_ALLOW_TINY_MODELS=1``).

``MaskStats``: how many masks the generator keeps and the fraction of the image their union covers.
The generator's thresholds are SAM 2's defaults (predicted IoU 0.8, stability 0.95, box NMS 0.7) unless
the caller passes others; ``points_per_side`` sets the prompt grid (SAM 2's default 32; cost grows with
its square).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.device import torch_device
from models.registry import files_digest, refuse_tiny, require

TINY = "sam2-tiny-random"
CONFIGS = {
    "sam2.1-hiera-tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
_TINY_SIZE = 512
_TINY_OVERRIDES = [f"++model.image_size={_TINY_SIZE}", "++model.image_encoder.trunk.stages=[1,1,2,1]",
                   "++model.image_encoder.trunk.global_att_blocks=[3]"]


@dataclass(frozen=True)
class MaskStats:
    count: int
    coverage: float  # 0..1, union of the kept masks over the image area


@dataclass
class MaskGenerator:
    model: object
    name: str
    weights_sha256: str
    image_size: int
    device: str = "cpu"

    def stats(self, image: np.ndarray, points_per_side: int, pred_iou_thresh: float = 0.8,
              stability_score_thresh: float = 0.95, box_nms_thresh: float = 0.7) -> MaskStats:
        """Masks of one RGB uint8 image."""
        import torch
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        generator = SAM2AutomaticMaskGenerator(
            self.model, points_per_side=points_per_side, points_per_batch=64, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, box_nms_thresh=box_nms_thresh)
        s = self.image_size  # the predictor assumes the backbone's feature sizes of a 1024 px input
        generator.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        with torch.inference_mode():
            masks = generator.generate(np.ascontiguousarray(image))
        if not masks:
            return MaskStats(0, 0.0)
        union = np.zeros(image.shape[:2], dtype=bool)
        for m in masks:
            union |= m["segmentation"]
        return MaskStats(len(masks), float(union.mean()))


def load_sam2(name: str) -> MaskGenerator:
    import torch
    from sam2.build_sam import build_sam2

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        model = build_sam2(CONFIGS["sam2.1-hiera-tiny"], None, device=device, mode="eval",
                           hydra_overrides_extra=_TINY_OVERRIDES)
        return MaskGenerator(model, TINY, "tiny-random", _TINY_SIZE, device)
    st = require(name)
    model = build_sam2(CONFIGS[name], str(st.where / next(iter(st.spec.files))), device=device, mode="eval")
    return MaskGenerator(model, name, files_digest(st), int(model.image_size), device)
