"""The report's watermark pair (registry family ``watermark``): a ResNeXt-101 32x8d classifier
(``watermark_resnext101_32x8d-large``) and a YOLO detector of watermark-like objects.

- Classifier: timm's ``ResNet`` class in the ``resnext101_32x8d`` configuration with a two-class head;
  the checkpoint (a state dict with torchvision/timm key names) is loaded from the weights folder. A head
  saved as ``fc.0`` / ``fc.2`` (Linear-ReLU-Linear) is rebuilt to the checkpoint's shapes. Input: the
  image resized to 256x256, ImageNet normalisation; the score is the softmax probability of class
  ``watermark_class`` (1).
- ``watermark-tiny-random``: the same ``ResNet`` class from a small config (one block per stage,
  cardinality 8, width 4), random weights — tests only (``CURATION_ALLOW_TINY_MODELS=1``).
- Detector: ``models.yolo`` on an Ultralytics ONNX export (registry ``watermark-yolo`` or a local
  ``.onnx`` path); its score is the highest box confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.device import torch_device
from models.registry import files_digest, refuse_tiny, require

TINY = "watermark-tiny-random"
INPUT = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class WatermarkClassifier:
    model: object
    name: str
    weights_sha256: str
    watermark_class: int = 1
    device: str = "cpu"

    def probabilities(self, images) -> np.ndarray:
        """P(watermark) per PIL image."""
        import torch
        from PIL import Image

        batch = np.stack([
            (np.asarray(img.convert("RGB").resize((INPUT, INPUT), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
             - MEAN) / STD for img in images
        ]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return torch.softmax(logits.float(), dim=1)[:, self.watermark_class].cpu().numpy()


def _build(tiny: bool):
    from timm.models.resnet import Bottleneck, ResNet

    if tiny:
        return ResNet(block=Bottleneck, layers=[1, 1, 1, 1], cardinality=8, base_width=4, num_classes=2)
    return ResNet(block=Bottleneck, layers=[3, 4, 23, 3], cardinality=32, base_width=8, num_classes=2)


def load_classifier(name: str) -> WatermarkClassifier:
    import torch

    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        device = torch_device()
        return WatermarkClassifier(_build(True).to(device).eval(), TINY, "tiny-random", device=device)
    st = require(name)
    state = torch.load(st.where / next(iter(st.spec.files)), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model = _build(False)
    if "fc.0.weight" in state:  # Linear -> ReLU -> Linear head
        hidden = state["fc.0.weight"].shape[0]
        model.fc = torch.nn.Sequential(torch.nn.Linear(model.num_features, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, state["fc.2.weight"].shape[0]))
    model.load_state_dict(state)
    device = torch_device()
    return WatermarkClassifier(model.to(device).eval(), name, files_digest(st), device=device)
