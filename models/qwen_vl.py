"""Qwen2.5-VL (registry family ``vlm``): one loader for the two places the report uses it — the Q-Align
rating method of the ``qalign`` stages (``models.qalign``) and the trainer's text encoder
(``training.text``, report §6.1.1: the hidden states of Qwen2.5-VL-7B-Instruct).

- ``qwen2.5-vl-7b-instruct``: ``transformers.Qwen2_5_VLForConditionalGeneration`` and its
  ``AutoProcessor`` loaded with ``from_pretrained`` from the weights folder (a Hugging Face snapshot of
  ``Qwen/Qwen2.5-VL-7B-Instruct``). bfloat16 on a GPU, float32 on the CPU.
- ``qwen-vl-tiny-random``: the same class from a tiny config (2 text layers of width 48, a 2-block
  vision tower of width 32), random weights, with a processor built here: a byte-level BPE tokenizer
  trained on a fixed corpus (so it is the same on every machine) with Qwen's special tokens, Qwen's chat
  format and a ``Qwen2VLImageProcessor`` — tests only (``CURATION_ALLOW_TINY_MODELS=1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.device import torch_device
from models.registry import files_digest, refuse_tiny, require

REAL = "qwen2.5-vl-7b-instruct"
TINY = "qwen-vl-tiny-random"
TINY_HIDDEN = 48  # the tiny CrossDiT's text width (training.configs "tiny": in_text_dim 48)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# Qwen's chat format for the tiny processor (the real processor brings its own template, which also adds
# a default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# What the tiny tokenizer is trained on: the words the prompts of this project use, so they become
# whole tokens as in the real vocabulary.
_CORPUS = (
    "How would you rate the quality of this image? The quality of the image is excellent good fair poor bad. "
    "How would you rate the aesthetics of this image? The aesthetics of the image is excellent good fair poor bad. "
    "How would you rate the quality of this video? The quality of the video is excellent good fair poor bad. "
    "You are a promt engineer. Describe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background. Describe the video in detail. Describe how the camera "
    "moves or shakes, describe the zoom and view angle, whether it follows the objects. Describe the location of "
    "the video, main characters or objects and their action. Name the visual style of the video. "
    "a photo of a cat on a red sofa, an astronaut, a city street at night, mountains and a lake. system user assistant"
)


@dataclass
class QwenVL:
    model: object
    processor: object
    name: str
    weights_sha256: str
    device: str = "cpu"

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def byte_level_bpe(special_tokens: tuple[str, ...]):
    """A small byte-level BPE (``tokenizers``) trained on a fixed corpus: the same on every machine, and
    the words of this project's prompts are whole tokens, as in the real vocabularies. For tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 4, trainer)
    return bpe


def _tiny_processor():
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = byte_level_bpe(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tokenizer.image_token = "<|image_pad|>"
    tokenizer.video_token = "<|video_pad|>"
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def _tiny_model(tokenizer):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 4, 4]},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_HIDDEN,
                           fullatt_block_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config)


def load_qwen_vl(name: str) -> QwenVL:
    """The model in eval mode on the stage's device, with its processor."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        processor = _tiny_processor()
        model = _tiny_model(processor.tokenizer)
        return QwenVL(model.to(device).eval(), processor, TINY, "tiny-random", device)
    st = require(name)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(st.where), dtype=dtype)
    processor = AutoProcessor.from_pretrained(str(st.where))
    return QwenVL(model.to(device).eval(), processor, name, files_digest(st), device)
