"""The trainer's text encoders: Kandinsky 5's prompt templates and crops, the Qwen2.5-VL + CLIP pair on
tiny random variants of the real classes, and a training run conditioned on them."""

from __future__ import annotations

import pytest
import torch

from models.registry import MissingWeights
from training.text import CROP_START, MAX_LENGTH, PROMPT_TEMPLATES, text_encoders


@pytest.fixture(scope="module")
def pair():
    return text_encoders("tiny-hf")


def test_templates_crops_and_lengths_are_the_reports():
    assert PROMPT_TEMPLATES["image"].format("a cat") == (
        "<|im_start|>system\nYou are a promt engineer. Describe the image by detailing the color, shape, size, "
        "texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
        "<|im_start|>user\na cat<|im_end|>")
    video = PROMPT_TEMPLATES["video"].split("\n")
    assert video[1] == "You are a promt engineer. Describe the video in detail." and len(video) == 10
    assert PROMPT_TEMPLATES["image2video"].split("\n")[3] == "Describe main characters actions."
    assert PROMPT_TEMPLATES["image_edit"].endswith("<|im_start|>user\n{}")  # no closing <|im_end|>
    assert CROP_START == {"video": 129, "image": 41, "image_edit": 55, "image2video": 132}
    assert MAX_LENGTH == {"image": 512, "image_edit": 512, "video": 256, "image2video": 256}


def test_the_crop_leaves_exactly_the_caption(pair):
    tok = pair.qwen.tokenizer
    for content, template in PROMPT_TEMPLATES.items():
        assert pair.crop_start[content] == len(tok(template.split("{}")[0], add_special_tokens=False)["input_ids"])
    out = pair.encode(["a photo of a cat", ""], "image")
    caption = tok("a photo of a cat<|im_end|>", add_special_tokens=False)["input_ids"]
    assert out.mask[0].sum() == len(caption) and out.mask[1].sum() == 1  # "" keeps its <|im_end|>
    assert out.hidden.shape == (2, len(caption), 48) and out.pooled.shape == (2, 24)
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_batching_padding_content_and_truncation(pair):
    prompts = ["a cat", "an astronaut on a red sofa in a city street at night"]
    together = pair.encode(prompts, "video")
    for i, p in enumerate(prompts):
        alone = pair.encode([p], "video")
        n = int(alone.mask.sum())
        assert torch.allclose(together.hidden[i, :n], alone.hidden[0, :n], atol=1e-5)
        assert int(together.mask[i].sum()) == n
        assert torch.allclose(together.pooled[i], alone.pooled[0], atol=1e-5)
    # the system prompt differs, so the caption's states do too
    assert not torch.allclose(pair.encode(["a cat"], "image").hidden, pair.encode(["a cat"], "video").hidden)
    long = " ".join(["mountains and a lake"] * 400)
    assert pair.encode([long], "video").hidden.shape[1] == MAX_LENGTH["video"]
    with pytest.raises(ValueError, match="content must be one of"):
        pair.encode(["x"], "audio")


def test_the_real_pair_needs_its_weights():
    with pytest.raises(MissingWeights, match="curation models pull qwen2.5-vl-7b-instruct"):
        text_encoders("qwen2.5-vl+clip")
    with pytest.raises(ValueError, match="unknown text encoder pair"):
        text_encoders("t5")


def test_training_conditioned_on_the_hf_pair(tmp_path, skimage_dir):
    from tests.test_training_run import config, shards_of_photos
    from training.train import Trainer

    uris, _, _ = shards_of_photos(tmp_path, skimage_dir)
    trainer = Trainer(config(text_encoders="tiny-hf", max_steps=2), uris, tmp_path / "run")
    trainer.train(log=None)
    assert trainer.step_num == 2 and all(torch.isfinite(torch.tensor(r.loss)) for r in trainer.history)
    with pytest.raises(ValueError, match="give widths"):
        Trainer(config(model="image-lite", text_encoders="tiny-hf"), uris, tmp_path / "x")


def test_image_edit_gives_qwen_the_source_image(pair, skimage_dir):
    from PIL import Image

    source = Image.open(skimage_dir / "astronaut.png").convert("RGB").resize((128, 128))
    with_image = pair.encode(["make it black and white"], "image_edit", [source])
    text_only = pair.encode(["make it black and white"], "image_edit")
    # the caption, then the image's visual tokens and <|im_end|>, all after the cropped prefix
    assert with_image.mask.sum() > text_only.mask.sum() + 16
    other = pair.encode(["make it black and white"], "image_edit", [source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert not torch.allclose(with_image.hidden, other.hidden)  # the states depend on the image
    with pytest.raises(ValueError, match="images go with content 'image_edit'"):
        pair.encode(["x"], "image", [source])
