"""TOPIQ (report §4.2 [66]: "separate scores for technical quality and aesthetic quality"), registry
family ``iqa``, built with pyiqa's ``CFANet`` class (the TOPIQ architecture: a ResNet-50 semantic
backbone with top-down cross-scale attention).

- ``topiq-nr-koniq``: technical quality, no-reference, trained on KonIQ-10k
  (``cfanet_nr_koniq_res50-9a73138b.pth``). Score roughly 0..1 (KonIQ MOS rescaled), **higher is better**.
  The image goes in at the resolution it is given (the stage caps the long side).
- ``topiq-iaa-ava``: aesthetic quality trained on AVA (``cfanet_iaa_ava_res50-3cd62bb3.pth``): 10 score
  classes, the score is the mean of the predicted distribution, 1..10, **higher is better**; the image
  is resized to 384x384 inside the model, as pyiqa's ``topiq_iaa_res50`` does.
- ``topiq-tiny-random``: the same ``CFANet`` class with a ResNet-18 backbone and narrow attention,
  random weights, as both heads — tests only (``CURATION_ALLOW_TINY_MODELS=1``).

Checkpoints are pyiqa's files (a ``params`` state dict); every parameter of the network must be in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.device import torch_device
from models.registry import MissingWeights, files_digest, refuse_tiny, require

TECHNICAL = "topiq-nr-koniq"
AESTHETIC = "topiq-iaa-ava"
TINY = "topiq-tiny-random"

# the CFANet configurations of pyiqa's ``topiq_nr`` and ``topiq_iaa_res50`` metrics
_CONFIGS = {
    TECHNICAL: dict(semantic_model_name="resnet50", model_name="cfanet_nr_koniq_res50"),
    AESTHETIC: dict(semantic_model_name="resnet50", model_name="cfanet_iaa_ava_res50", inter_dim=512, num_heads=8,
                    num_class=10, test_img_size=384),
}
_TINY_CONFIGS = {
    TECHNICAL: dict(semantic_model_name="resnet18", model_name="tiny", inter_dim=32, num_heads=2),
    AESTHETIC: dict(semantic_model_name="resnet18", model_name="tiny", inter_dim=32, num_heads=2, num_class=10,
                    test_img_size=384),
}


@dataclass
class TopiqModel:
    model: object
    name: str
    weights_sha256: str
    device: str = "cpu"

    def score(self, images: list[np.ndarray]) -> list[float]:
        """One score per RGB uint8 image (each at its own size)."""
        import torch

        out = []
        with torch.no_grad():
            for img in images:
                x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255.0)[None]
                out.append(float(self.model(x.to(self.device)).flatten()[0]))
        return out


def _cfanet(**config):
    from pyiqa.archs.topiq_arch import CFANet

    return CFANet(use_ref=False, pretrained=False, backbone_pretrain=False, **config)


def load_state(model, path) -> None:
    """Load a pyiqa checkpoint; a checkpoint that leaves any parameter unset is refused."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("params", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes of another configuration
        raise MissingWeights(f"{path}: not a TOPIQ checkpoint of this configuration ({str(exc).splitlines()[1].strip()})") from None
    if result.missing_keys:
        raise MissingWeights(f"{path}: not a TOPIQ checkpoint of this configuration "
                             f"({len(result.missing_keys)} parameters missing, e.g. {result.missing_keys[0]})")


def load_topiq(head: str, name: str) -> TopiqModel:
    """``head`` is TECHNICAL or AESTHETIC (the configuration); ``name`` the registry model or TINY."""
    import torch

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        torch.manual_seed(0 if head == TECHNICAL else 1)
        return TopiqModel(_cfanet(**_TINY_CONFIGS[head]).to(device).eval(), TINY, "tiny-random", device)
    st = require(name)
    model = _cfanet(**_CONFIGS[head])
    load_state(model, st.where / next(iter(st.spec.files)))
    return TopiqModel(model.to(device).eval(), name, files_digest(st), device)
