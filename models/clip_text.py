"""The CLIP text tower the trainer conditions on (report §6.1.1: the pooled CLIP ViT-L/14 text embedding,
added to the time embedding), registry family ``clip``, through ``transformers.CLIPTextModel``.

- ``clip-vit-large-patch14``: ``CLIPTextModel`` + ``CLIPTokenizer`` with ``from_pretrained`` from the
  weights folder (a snapshot of ``openai/clip-vit-large-patch14``; the text tower is read out of the full
  CLIP checkpoint). ``pooler_output``: 768 values per prompt, at most 77 tokens (padding to 77 as the
  Kandinsky code does).
- ``clip-text-tiny-random``: the same class from a tiny config (2 layers of width 24, the tiny CrossDiT's
  pooled width) with a byte-level tokenizer built here — tests only (``CURATION_ALLOW_TINY_MODELS=1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.device import torch_device
from models.registry import files_digest, refuse_tiny, require

REAL = "clip-vit-large-patch14"
TINY = "clip-text-tiny-random"
TINY_HIDDEN = 24  # training.configs "tiny": in_text_dim2 24
MAX_LENGTH = 77


@dataclass
class ClipText:
    model: object
    tokenizer: object
    name: str
    weights_sha256: str
    device: str = "cpu"

    def pooled(self, prompts: list[str]):
        """[B, hidden] ``pooler_output`` (the end-of-text token's state) of the raw prompts."""
        import torch

        inputs = self.tokenizer(prompts, max_length=MAX_LENGTH, truncation=True, padding="max_length",
                                return_tensors="pt")
        with torch.no_grad():
            return self.model(input_ids=inputs["input_ids"].to(self.device),
                              attention_mask=inputs["attention_mask"].to(self.device)).pooler_output.float()


def _tiny():
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from models.qwen_vl import byte_level_bpe

    bpe = byte_level_bpe(("<|pad|>", "<|startoftext|>", "<|endoftext|>"))
    bos, eos = bpe.token_to_id("<|startoftext|>"), bpe.token_to_id("<|endoftext|>")
    bpe.post_processor = TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                            special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                        pad_token="<|pad|>")
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
                            bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return CLIPTextModel(config), tokenizer


def load_clip_text(name: str) -> ClipText:
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch_device()
    if name == TINY:
        refuse_tiny(TINY)
        model, tokenizer = _tiny()
        return ClipText(model.to(device).eval(), tokenizer, TINY, "tiny-random", device)
    st = require(name)
    model = CLIPTextModel.from_pretrained(str(st.where))
    tokenizer = CLIPTokenizer.from_pretrained(str(st.where))
    return ClipText(model.to(device).eval(), tokenizer, name, files_digest(st), device)
