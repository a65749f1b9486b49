"""The camera / object / light-dynamics predictor (report §4.4, ref. [82]: "a specialized model based on
VideoMAE architecture ... trained to predict scores for camera movement, object movement, and dynamics
of light and color changes"), registry family ``motion``.

- ``kandinsky-video-motion``: ``transformers.VideoMAEForVideoClassification`` with three regression
  outputs, loaded with ``from_pretrained`` from the weights folder (a ``config.json`` + weights as the
  Kandinsky team released them). Input: 16 frames at 224x224, ImageNet normalisation (the VideoMAE
  defaults; the folder's config decides the real values).
- ``motion-tiny-random``: the same class from a tiny config (4 frames of 32x32, 2 layers of width 32),
  random weights — tests only (``CURATION_ALLOW_TINY_MODELS=1``).
Outputs are the model's three regression values in order ``camera, object, light``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.device import torch_device
from models.registry import MissingWeights, files_digest, refuse_tiny, require

TINY = "motion-tiny-random"
OUTPUTS = ("camera_motion", "object_motion", "light_dynamics")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class MotionModel:
    model: object
    frames: int
    size: int
    name: str
    weights_sha256: str
    device: str = "cpu"

    def predict(self, clips: list[np.ndarray]) -> np.ndarray:
        """(N, 3) scores for clips of ``frames`` RGB uint8 frames already at ``size`` x ``size``."""
        import torch

        x = np.stack([(c.astype(np.float32) / 255.0 - MEAN) / STD for c in clips])  # N, T, H, W, C
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))).to(self.device)  # N, T, C, H, W
        with torch.no_grad():
            return self.model(pixel_values=x).logits.float().cpu().numpy()


def load_motion(name: str) -> MotionModel:
    import torch
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                num_labels=len(OUTPUTS), problem_type="regression")
        model = VideoMAEForVideoClassification(config)
        return MotionModel(model.to(device).eval(), 4, 32, TINY, "tiny-random", device)
    st = require(name)
    model = VideoMAEForVideoClassification.from_pretrained(str(st.where))
    if model.config.num_labels != len(OUTPUTS):
        raise MissingWeights(f"{name}: expected {len(OUTPUTS)} outputs, the checkpoint has {model.config.num_labels}")
    return MotionModel(model.to(device).eval(), int(model.config.num_frames), int(model.config.image_size), name,
                       files_digest(st), device)
