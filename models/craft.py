"""CRAFT text detection (Baek et al., "Character Region Awareness for Text Detection", 2019), the text
model of report §4.2 / §4.4; registry family ``text``.

The network: a VGG-16 backbone with batch norm, cut into five slices (the fifth adds a dilated
"fc6/fc7" pair), and four up-convolution blocks that merge each slice's features on the way back up to
1/2 of the input resolution, where a small head predicts two maps: the **region score** (how likely a
pixel is a character centre) and the **affinity score** (how likely it lies between two characters of
one word). Module names follow the authors' release, so their ``craft_mlt_25k.pth`` (saved from a
``DataParallel``: keys prefixed ``module.``) loads as it is.

- ``craft-mlt-25k``: the authors' weights from the weights folder (``width`` 1, the real config).
- ``craft-tiny-random``: the same class with every channel count divided by 16, random weights — tests
  only (``CURATION_ALLOW_TINY_MODELS=1``).

Boxes: the image is scaled so its long side is ``mag_ratio`` (1.5) times larger, at most ``canvas`` (1280)
pixels, padded to a multiple of 32; pixels with region > ``low_text`` (0.4) or affinity > ``link`` (0.4)
form connected components (4-connectivity); a component of at least 10 pixels whose peak region score
reaches ``text_threshold`` (0.7) becomes a word, dilated in proportion to its size and boxed by its
minimum-area rectangle, in original image pixels. (These are the authors' published defaults.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.device import torch_device
from models.registry import files_digest, refuse_tiny, require

TINY = "craft-tiny-random"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_craft(width: int = 1):
    """The CRAFT network with channel counts divided by ``width`` (1: the published model)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def c(n: int) -> int:
        return max(4, n // width)

    def vgg_layers() -> list:
        layers, ch = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, c(v), 3, padding=1), nn.BatchNorm2d(c(v)), nn.ReLU(inplace=True)]
                ch = c(v)
        return layers

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            features = vgg_layers()
            bounds = [(0, 12), (12, 19), (19, 29), (29, 39)]  # to conv2_2, conv3_3, conv4_3, conv5_3 (pre-ReLU)
            for n, (a, b) in enumerate(bounds, start=1):
                s = nn.Sequential()
                for i in range(a, b):
                    s.add_module(str(i), features[i])
                setattr(self, f"slice{n}", s)
            self.slice5 = nn.Sequential(
                nn.MaxPool2d(3, 1, 1),
                nn.Conv2d(c(512), c(1024), 3, padding=6, dilation=6),
                nn.Conv2d(c(1024), c(1024), 1),
            )

        def forward(self, x):
            h2 = self.slice1(x)
            h3 = self.slice2(h2)
            h4 = self.slice3(h3)
            h5 = self.slice4(h4)
            return self.slice5(h5), h5, h4, h3, h2

    class DoubleConv(nn.Module):
        def __init__(self, in_ch, mid_ch, out_ch):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(in_ch + mid_ch, mid_ch, 1), nn.BatchNorm2d(mid_ch), nn.ReLU(inplace=True),
                nn.Conv2d(mid_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            )

        def forward(self, x):
            return self.conv(x)

    class Craft(nn.Module):
        def __init__(self):
            super().__init__()
            self.basenet = Backbone()
            self.upconv1 = DoubleConv(c(1024), c(512), c(256))
            self.upconv2 = DoubleConv(c(512), c(256), c(128))
            self.upconv3 = DoubleConv(c(256), c(128), c(64))
            self.upconv4 = DoubleConv(c(128), c(64), c(32))
            self.conv_cls = nn.Sequential(
                nn.Conv2d(c(32), c(32), 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c(32), c(32), 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c(32), c(16), 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c(16), c(16), 1), nn.ReLU(inplace=True),
                nn.Conv2d(c(16), 2, 1),
            )

        def forward(self, x):
            fc7, h5, h4, h3, h2 = self.basenet(x)
            y = self.upconv1(torch.cat([fc7, h5], dim=1))
            for up, skip in ((self.upconv2, h4), (self.upconv3, h3), (self.upconv4, h2)):
                y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
                y = up(torch.cat([y, skip], dim=1))
            return self.conv_cls(y).permute(0, 2, 3, 1)  # N, H/2, W/2, (region, affinity)

    return Craft()


def boxes_from_maps(region: np.ndarray, affinity: np.ndarray, *, text_threshold: float = 0.7,
                    link_threshold: float = 0.4, low_text: float = 0.4) -> list[np.ndarray]:
    """Word boxes ([4, 2] corner arrays, in score-map pixels) from the two score maps."""
    import cv2

    text_mask = region > low_text
    link_mask = affinity > link_threshold
    combined = (text_mask | link_mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(combined, connectivity=4)
    h, w = region.shape
    boxes = []
    for k in range(1, n):
        x, y, bw, bh, size = stats[k]
        if size < 10:
            continue
        component = labels == k
        if region[component].max() < text_threshold:
            continue
        seg = np.zeros((h, w), np.uint8)
        seg[component] = 255
        seg[link_mask & ~text_mask] = 0  # links join characters; they are not text themselves
        pad = int(math.sqrt(size * min(bw, bh) / (bw * bh)) * 2)
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad + 1), min(h, y + bh + pad + 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1 + pad, 1 + pad))
        seg[y0:y1, x0:x1] = cv2.dilate(seg[y0:y1, x0:x1], kernel)
        points = np.column_stack(np.nonzero(seg)[::-1]).astype(np.float32)
        if len(points) < 3:
            continue
        boxes.append(cv2.boxPoints(cv2.minAreaRect(points)).astype(np.float32))
    return boxes


@dataclass
class CraftDetector:
    model: object
    name: str
    weights_sha256: str
    device: str = "cpu"
    canvas: int = 1280
    mag_ratio: float = 1.5

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Word boxes as [4, 2] arrays of (x, y) corners in the image's pixels."""
        import cv2
        import torch

        h, w = rgb.shape[:2]
        target = min(self.mag_ratio * max(h, w), self.canvas)
        ratio = target / max(h, w)
        th, tw = max(1, round(h * ratio)), max(1, round(w * ratio))
        ph, pw = th + (-th) % 32, tw + (-tw) % 32
        canvas = np.zeros((ph, pw, 3), np.float32)
        canvas[:th, :tw] = (cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR).astype(np.float32) - MEAN) / STD
        x = torch.from_numpy(canvas.transpose(2, 0, 1)[None]).to(self.device)
        with torch.no_grad():
            maps = self.model(x)[0].float().cpu().numpy()
        boxes = boxes_from_maps(maps[:, :, 0], maps[:, :, 1])
        scale = 2.0 / ratio  # score maps are at half the network input
        return [b * scale for b in boxes]


def load_craft(name: str) -> CraftDetector:
    import torch

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0)
        return CraftDetector(build_craft(16).to(device).eval(), TINY, "tiny-random", device)
    st = require(name)
    state = torch.load(st.where / next(iter(st.spec.files)), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_craft(1)
    model.load_state_dict(state)
    return CraftDetector(model.to(device).eval(), name, files_digest(st), device)
