"""SAM 2 automatic masks (report §4.2 [69]: "the SAM 2 model generates segmentation masks"), registry
family ``segmentation``, on transformers' SAM 2 classes (``Sam2Model`` + ``Sam2Processor``).

- ``sam2.1-hiera-tiny`` / ``sam2.1-hiera-large``: the released SAM 2.1 checkpoints in the Hugging Face
  layout (``config.json`` + ``model.safetensors``, as facebook/sam2.1-hiera-tiny / -large publish them),
  loaded strictly: every parameter of ``Sam2Model`` must be in the file with its shape, and the file may
  hold nothing else but the video tracker's memory modules (``Sam2VideoModel`` loads the same layout, and
  transformers names those keys in ``Sam2Model._keys_to_ignore_on_load_unexpected``). The backbone in
  ``config.json`` (a ``sam2`` or ``sam2_video`` config) must be the release's Hiera (``CONFIGS``).
- ``sam2-tiny-random``: the same ``Sam2Model`` class from a small config (Hiera of 5 blocks at widths
  16–128, a 512 px input, width-32 prompt encoder and mask decoder), random weights — tests only
  (``CURATION_ALLOW_TINY_MODELS=1``).

``MaskStats``: how many masks the generator keeps and the fraction of the image their union covers. The
generator is SAM 2's automatic one: a ``points_per_side`` grid of one-point prompts (SAM 2's default 32;
cost grows with its square), three masks per point, kept when the predicted IoU and the stability score
pass their thresholds (SAM 2's defaults 0.8 / 0.95, stability offset 1), then box NMS (0.7). Filtering
and NMS are the image processor's helpers (``filter_masks``, ``post_process_for_mask_generation``, as in
transformers' mask-generation pipeline). The grid is built here, in pixels, and normalised by
``Sam2Processor``: ``generate_crop_boxes`` scales points by the long side (SAM 1's resize), which misplaces
them on a non-square image under SAM 2's square resize.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.device import torch_device
from models.registry import MissingWeights, files_digest, refuse_tiny, require

TINY = "sam2-tiny-random"
# The released Hiera backbones (sam2's configs/sam2.1/sam2.1_hiera_t.yaml / _l.yaml): 38.9M / 224.4M
# parameters with the video tracker's modules, as the release notes count them.
CONFIGS = {
    "sam2.1-hiera-tiny": dict(hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 7, 2],
                              embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
                              window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[5, 7, 9]),
    "sam2.1-hiera-large": dict(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                               embed_dim_per_stage=[144, 288, 576, 1152], num_attention_heads_per_stage=[2, 4, 8, 16],
                               window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43]),
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
POINTS_PER_BATCH = 16  # prompts per decoder call: each keeps 3 full-resolution float masks in memory
_TINY_SIZE = 512
_TINY_WIDTH = 32


@dataclass(frozen=True)
class MaskStats:
    count: int
    coverage: float  # 0..1, union of the kept masks over the image area


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
    """SAM 2's prompt grid: the centres of a ``points_per_side`` square grid of cells, as (x, y) pixels."""
    centres = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = np.meshgrid(centres * width, centres * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass
class MaskGenerator:
    model: object  # transformers.Sam2Model
    processor: object  # transformers.Sam2Processor
    name: str
    weights_sha256: str
    image_size: int
    device: str = "cpu"

    def stats(self, image: np.ndarray, points_per_side: int, pred_iou_thresh: float = 0.8,
              stability_score_thresh: float = 0.95, box_nms_thresh: float = 0.7) -> MaskStats:
        """Masks of one RGB uint8 image (H, W, 3)."""
        import torch

        height, width = image.shape[:2]
        images = self.processor.image_processor
        pixels = self.processor(images=np.array(image), return_tensors="pt")["pixel_values"]  # a writable copy
        grid = point_grid(points_per_side, height, width).tolist()
        rles, scores, boxes = [], [], []
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixels.to(self.device))
            for start in range(0, len(grid), POINTS_PER_BATCH):
                points = grid[start:start + POINTS_PER_BATCH]
                prompts = self.processor(original_sizes=[[height, width]], input_points=[[[p] for p in points]],
                                         input_labels=[[[1] for _ in points]], return_tensors="pt")
                out = self.model(image_embeddings=embeddings, input_points=prompts["input_points"].to(self.device),
                                 input_labels=prompts["input_labels"].to(self.device), multimask_output=True)
                logits = self.processor.post_process_masks(out.pred_masks, [[height, width]], binarize=False)[0]
                kept, kept_scores, kept_boxes = images.filter_masks(
                    logits, out.iou_scores[0], (height, width), [0, 0, width, height], pred_iou_thresh,
                    stability_score_thresh, mask_threshold=0.0, stability_score_offset=1.0)
                rles += kept
                scores.append(kept_scores.float().cpu())
                boxes.append(kept_boxes.cpu())
        if not rles:
            return MaskStats(0, 0.0)
        masks, *_ = images.post_process_for_mask_generation(rles, torch.cat(scores), torch.cat(boxes), box_nms_thresh)
        union = torch.zeros((height, width), dtype=torch.bool)
        for mask in masks:
            union |= mask
        return MaskStats(len(masks), float(union.float().mean()))


def _processor(size: int):
    from transformers import Sam2ImageProcessor, Sam2Processor

    return Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size}), target_size=size)


def released_config(name: str):
    """``Sam2Config`` of a released checkpoint: its Hiera backbone, transformers' defaults elsewhere."""
    from transformers import Sam2Config

    backbone = {"model_type": "sam2_hiera_det_model", **CONFIGS[name]}
    return Sam2Config(vision_config={"backbone_config": backbone,
                                     "backbone_channel_list": backbone["embed_dim_per_stage"][::-1]})


def tiny_config():
    from transformers import Sam2Config

    s, w = _TINY_SIZE, _TINY_WIDTH
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 16, "image_size": [s, s],
                "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 2, 2], "global_attention_blocks": [3]}
    return Sam2Config(
        vision_config={"backbone_config": backbone, "backbone_channel_list": [128, 64, 32, 16],
                       "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
                       "fpn_hidden_size": w},
        prompt_encoder_config={"hidden_size": w, "image_size": s, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": w, "mlp_dim": 2 * w, "num_attention_heads": 2, "iou_head_hidden_dim": w})


def read_config(path: Path):
    """``Sam2Config`` from a checkpoint's ``config.json`` (a ``sam2`` or ``sam2_video`` config: the image
    model's three sub-configs are the same in both)."""
    from transformers import Sam2Config

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MissingWeights(f"{path}: not a readable config.json ({exc})") from None
    if data.get("model_type") not in ("sam2", "sam2_video"):
        raise MissingWeights(f"{path}: model_type {data.get('model_type')!r} is not a SAM 2 config")
    parts = ("vision_config", "prompt_encoder_config", "mask_decoder_config")
    return Sam2Config(**{k: data[k] for k in parts if k in data})


def load_strict(name: str, folder: Path):
    """``Sam2Model`` of a released checkpoint folder. Refused (``MissingWeights``) unless the backbone is
    the release's, every parameter is in ``model.safetensors`` with its shape, and the file holds nothing
    else but the video tracker's modules."""
    import torch
    from safetensors.torch import load_file
    from transformers import Sam2Model

    config = read_config(folder / CONFIG_FILE)
    backbone = config.vision_config.backbone_config
    for key in ("blocks_per_stage", "embed_dim_per_stage"):
        if list(getattr(backbone, key)) != CONFIGS[name][key]:
            raise MissingWeights(f"{folder / CONFIG_FILE}: backbone {key} {getattr(backbone, key)} is not "
                                 f"{name}'s {CONFIGS[name][key]}")
    model = Sam2Model(config)
    expected = model.state_dict()
    state = load_file(str(folder / WEIGHTS_FILE))
    tracker = [re.compile(p) for p in Sam2Model._keys_to_ignore_on_load_unexpected]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not any(p.search(k) for p in tracker))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{what}: {len(keys)} (e.g. {keys[0]})" for what, keys in
                (("parameters missing", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)) if keys]
    if problems:
        raise MissingWeights(f"{folder / WEIGHTS_FILE}: not a {name} checkpoint for transformers' Sam2Model "
                             f"({'; '.join(problems)}) — run `curation models pull {name}`")
    with torch.no_grad():
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model


def load_sam2(name: str) -> MaskGenerator:
    import torch
    from transformers import Sam2Model

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        model = Sam2Model(tiny_config())
        return MaskGenerator(model.to(device).eval(), _processor(_TINY_SIZE), TINY, "tiny-random", _TINY_SIZE, device)
    st = require(name)
    model = load_strict(name, st.where)
    size = int(model.config.prompt_encoder_config.image_size)
    return MaskGenerator(model.to(device).eval(), _processor(size), name, files_digest(st), size, device)
