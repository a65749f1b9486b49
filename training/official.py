"""Loading the released Kandinsky 5.0 weights into CrossDiT (issue 11 §5), strictly.

The official checkpoints (kandinskylab/kandinsky-5; Hugging Face repos ``kandinskylab/Kandinsky-5.0-…``,
the DiT under ``model/``) are single safetensors files of ``DiffusionTransformer3D`` state dicts, e.g.

| file (official ``configs/*.yaml`` ``checkpoint_path``) | our config |
|---|---|
| ``kandinsky5lite_t2v_sft_5s.safetensors``, ``kandinsky5lite_t2v_sft_10s.safetensors``, ``…_pretrain_…``, ``…_nocfg_…``, ``…_distil_…`` | ``video-lite`` |
| ``kandinsky5lite_i2v_5s.safetensors`` | ``video-lite`` |
| ``kandinsky5lite_t2i.safetensors`` | ``image-lite`` |
| ``kandinsky5lite_i2i.safetensors`` (editing) | ``image-lite-edit`` |
| ``kandinsky5pro_t2v_sft_5s.safetensors``, ``kandinsky5pro_t2v_sft_10s.safetensors``, ``kandinsky5_i2v_pro_20b_5s.safetensors`` | ``video-pro`` |

Our module names differ from the official ones only by name (``OFFICIAL_NAMES``): the tensors map one to
one, with no reshaping — our patchify already flattens (pt, ph, pw, C) with C fastest as the official
``VisualEmbeddings``, and our unpatchify reads the output as (C, pt, ph, pw) as the official ``OutLayer``.
Loading is strict: every official key must be used, every parameter of ours filled, every shape equal;
anything else raises ``OfficialCheckpointError`` naming the keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from training.model import CrossDiT

# (our name pattern, official name); \1 is the block index
OFFICIAL_NAMES: list[tuple[str, str]] = [
    (r"time_embedding\.(in_layer|out_layer)\.", r"time_embeddings.\1."),
    (r"text_embedding\.0\.", "text_embeddings.in_layer."),
    (r"text_embedding\.1\.", "text_embeddings.norm."),
    (r"pooled_text_embedding\.0\.", "pooled_text_embeddings.in_layer."),
    (r"pooled_text_embedding\.1\.", "pooled_text_embeddings.norm."),
    (r"visual_embedding\.", "visual_embeddings.in_layer."),
    (r"text_blocks\.(\d+)\.modulation\.linear\.", r"text_transformer_blocks.\1.text_modulation.out_layer."),
    (r"text_blocks\.(\d+)\.", r"text_transformer_blocks.\1."),
    (r"visual_blocks\.(\d+)\.modulation\.linear\.", r"visual_transformer_blocks.\1.visual_modulation.out_layer."),
    (r"visual_blocks\.(\d+)\.", r"visual_transformer_blocks.\1."),
    (r"out_modulation\.linear\.", "out_layer.modulation.out_layer."),
    (r"out_layer\.", "out_layer.out_layer."),
]


class OfficialCheckpointError(ValueError):
    pass


def official_name(name: str) -> str:
    """The official state-dict key of one of our parameter names."""
    for pattern, replacement in OFFICIAL_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    raise KeyError(f"no official name for {name!r}")


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under the official keys (for writing a checkpoint the official code loads)."""
    return {official_name(k): v for k, v in state.items()}


def load_official_state(model: CrossDiT, official: dict[str, torch.Tensor]) -> None:
    """Copy an official ``DiffusionTransformer3D`` state dict into ``model`` (cast to its dtype), strictly."""
    ours = model.state_dict()
    wanted = {official_name(k): k for k in ours}
    missing = sorted(set(wanted) - set(official))
    unused = sorted(set(official) - set(wanted))
    wrong = [f"{k}: checkpoint {tuple(official[k].shape)}, model {tuple(ours[wanted[k]].shape)}"
             for k in sorted(set(wanted) & set(official)) if official[k].shape != ours[wanted[k]].shape]
    if missing or unused or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unused)} not used (e.g. {unused[:3]})" if unused else "",
                 f"{len(wrong)} of another shape ({'; '.join(wrong[:3])})" if wrong else ""]
        raise OfficialCheckpointError("the checkpoint does not fit this model config: "
                                      + ", ".join(p for p in parts if p))
    model.load_state_dict({ours_key: official[k].to(ours[ours_key].dtype) for k, ours_key in wanted.items()},
                          strict=True)


def load_official(model: CrossDiT, path: str | Path) -> CrossDiT:
    """Load an official ``.safetensors`` file (see the module docstring for the names) into ``model``."""
    from safetensors.torch import load_file

    load_official_state(model, load_file(str(path)))
    return model
