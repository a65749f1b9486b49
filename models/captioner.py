"""One captioner interface — a prompt with images (or text only) in, generated text out, batched — and its
three backends, chosen by name (``make_captioner``):

- ``transformers``: the Qwen2.5-VL class of ``models.qwen_vl`` (a registry name, a local Hugging Face
  folder, or the tiny random test variant), ``model.generate`` on the CPU or the GPU. A local folder of
  another architecture is loaded as a text-only causal LM (``AutoModelForCausalLM``).
- ``openai``: an OpenAI-compatible chat-completions server (a vLLM server, or any compatible one the user
  runs): ``base_url`` + ``model``, the API key read from the environment variable the params name, at most
  ``concurrency`` requests in flight, a timeout per request, retries with exponential back-off on timeouts,
  connection errors, 429/5xx answers and malformed JSON; images go as base64 data URLs.
- ``vllm``: vLLM's offline engine (``pip install '.[gpu]'``, imported only when this backend is chosen),
  batched ``LLM.chat``; a request with ``choices`` is decoded constrained to them (guided choice).

Each request's outcome is a ``Generation`` or a ``GenerationError`` (its ``error_class`` becomes the item
error's class), so one failed request never fails the batch. Weights identity (``model_identity``): the
registry digest, a digest of a local folder's files, ``random-init`` for a tiny variant, or
``served:<base_url>#<model>`` for a server (whose weights cannot be verified from here).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("transformers", "openai", "vllm")


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of every backend: ``temperature`` 0 is greedy decoding."""

    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class Request:
    """One generation: ``images`` (PIL, RGB; several for a video's frames) come before the ``prompt`` in
    the user turn; ``choices`` constrains the answer where the backend can (vLLM's guided choice)."""

    prompt: str
    images: tuple = ()
    system: str | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int | None = None


class GenerationError(Exception):
    """A request that produced no text; ``error_class`` is the item error's class."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (vLLM not installed, no API key in the environment, ...)."""


class Captioner(ABC):
    """A model that answers prompts about images (or text). ``name`` is the model, ``weights`` its
    identity (see the module docstring)."""

    backend: str
    name: str
    weights: str

    @abstractmethod
    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation | GenerationError]:
        """One outcome per request, in order."""

    def close(self) -> None:
        """Free the model or the connection pool."""


# --- model resolution ------------------------------------------------------------------------------


def resolve_model(model: str) -> tuple[str | None, str]:
    """(local folder or None for the tiny variant, weights identity) of a registry name or a local folder."""
    from models.qwen_vl import TINY
    from models.registry import REGISTRY, files_digest, require

    if model == TINY:
        return None, "random-init"
    if model in REGISTRY:
        st = require(model)
        return str(st.where), files_digest(st)
    path = Path(model)
    if path.is_dir():
        return str(path), folder_digest(path)
    raise BackendUnavailable(f"model {model!r} is neither a registered model nor a local folder")


def folder_digest(path: Path) -> str:
    """sha256 over the (name, sha256) of a model folder's files (each file's sha256 cached beside it)."""
    from models.registry import recorded_sha256

    parts = [f"{f.relative_to(path)}:{recorded_sha256(f)}" for f in sorted(path.rglob("*"))
             if f.is_file() and not f.name.endswith(".sha256")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_identity(backend: str, model: str, base_url: str | None = None) -> str:
    if backend == "openai":
        return f"served:{base_url}#{model}"
    return resolve_model(model)[1]


def make_captioner(backend: str, model: str, **options: Any) -> Captioner:
    """The backend by name; ``options``: ``max_pixels`` (transformers), ``base_url``, ``api_key_env``,
    ``concurrency``, ``timeout_s``, ``retries``, ``backoff_s`` (openai), ``max_pixels``,
    ``gpu_memory_utilization``, ``max_model_len`` (vllm)."""
    if backend == "transformers":
        return TransformersCaptioner(model, max_pixels=options.get("max_pixels", 448 * 448))
    if backend == "openai":
        keys = ("api_key_env", "concurrency", "timeout_s", "retries", "backoff_s", "max_pixels")
        return OpenAICaptioner(options["base_url"], model, **{k: options[k] for k in keys if k in options})
    if backend == "vllm":
        keys = ("max_pixels", "gpu_memory_utilization", "max_model_len")
        return VLLMCaptioner(model, **{k: options[k] for k in keys if k in options})
    raise ValueError(f"unknown captioner backend {backend!r}; one of {', '.join(BACKENDS)}")


def chat_messages(request: Request, image_part) -> list[dict]:
    """The request as chat messages; ``image_part(img)`` renders one image content part."""
    content = [image_part(img) for img in request.images] + [{"type": "text", "text": request.prompt}]
    messages = [{"role": "system", "content": request.system}] if request.system else []
    return messages + [{"role": "user", "content": content}]


def fit_pixels(img, max_pixels: int):
    """The image scaled down (aspect kept) to at most ``max_pixels``; what a server is sent."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = (max_pixels / (w * h)) ** 0.5
    return img.resize((max(1, int(w * scale)), max(1, int(h * scale))))


# --- transformers ----------------------------------------------------------------------------------


class TransformersCaptioner(Captioner):
    """``model.generate`` on a left-padded batch (one forward pass per new token for the whole batch)."""

    backend = "transformers"

    def __init__(self, model: str, max_pixels: int = 448 * 448):
        from models.qwen_vl import load_qwen_vl

        self.max_pixels = max_pixels
        folder, self.weights = resolve_model(model)
        if folder is None or not Path(model).is_dir():  # the tiny variant, or a registry VLM
            self.vlm = load_qwen_vl(model)
        elif _model_type(folder) == "qwen2_5_vl":
            self.vlm = _load_vl_folder(folder)
        else:
            self.vlm = _load_text_folder(folder)
        self.vlm.tokenizer.padding_side = "left"  # generation appends on the right
        self.name = model if not Path(model).is_dir() else str(Path(model).resolve())

    def inputs(self, requests: Sequence[Request]) -> dict:
        """The processor's tensors for a batch of requests, on the model's device."""
        proc = self.vlm.processor
        texts = [proc.apply_chat_template(chat_messages(r, lambda _img: {"type": "image"}), tokenize=False,
                                          add_generation_prompt=True) for r in requests]
        images = [img.convert("RGB") for r in requests for img in r.images]
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
            least = proc.image_processor.size["shortest_edge"]  # Qwen's sizes are pixel counts
            kwargs["images_kwargs"] = {"size": {"shortest_edge": min(least, self.max_pixels),
                                                "longest_edge": self.max_pixels}}
        got = proc(text=texts, return_tensors="pt", padding=True, **kwargs)
        return {k: v.to(self.vlm.device) for k, v in got.items()}

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation | GenerationError]:
        import torch

        if not requests:
            return []
        inputs = self.inputs(requests)
        tok = self.vlm.tokenizer
        options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tok.pad_token_id}
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.vlm.model.generate(**inputs, **options)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        stops = {tok.eos_token_id, tok.pad_token_id}
        results: list[Generation | GenerationError] = []
        for row, n_prompt in zip(new.tolist(), prompt_tokens):
            ids = []
            for t in row:
                if t in stops:
                    break
                ids.append(t)
            results.append(Generation(tok.decode(ids, skip_special_tokens=True), len(ids), int(n_prompt)))
        return results

    def close(self) -> None:
        del self.vlm


def _model_type(folder: str) -> str | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _load_vl_folder(folder: str):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from models.device import torch_device
    from models.qwen_vl import QwenVL

    device = torch_device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    return QwenVL(model.to(device).eval(), AutoProcessor.from_pretrained(folder), folder, folder_digest(Path(folder)),
                  device)


@dataclass
class _TextProcessor:
    """A tokenizer standing in for a processor: the text-only LLM path (no images)."""

    tokenizer: Any
    image_processor: Any = None

    def apply_chat_template(self, messages, **kwargs):
        flat = [{**m, "content": m["content"] if isinstance(m["content"], str)
                 else " ".join(c["text"] for c in m["content"] if c["type"] == "text")} for m in messages]
        return self.tokenizer.apply_chat_template(flat, **kwargs)

    def __call__(self, text, images=None, **kwargs):
        if images:
            raise GenerationError("images_unsupported", "this text-only model cannot take images")
        kwargs.pop("images_kwargs", None)
        return self.tokenizer(text, add_special_tokens=False, **kwargs)


def _load_text_folder(folder: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.device import torch_device
    from models.qwen_vl import QwenVL

    device = torch_device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return QwenVL(model.to(device).eval(), _TextProcessor(tokenizer), folder, folder_digest(Path(folder)), device)


# --- OpenAI-compatible HTTP ------------------------------------------------------------------------


def data_url(img, max_pixels: int) -> str:
    buf = io.BytesIO()
    fit_pixels(img.convert("RGB"), max_pixels).save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class OpenAICaptioner(Captioner):
    """Chat completions over HTTP (stdlib ``urllib``; one thread per request in flight)."""

    base_url: str
    name: str
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    max_pixels: int = 1024 * 1024
    backend: str = field(default="openai", init=False)

    def __post_init__(self) -> None:
        self.weights = model_identity("openai", self.name, self.base_url)
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="captioner-http")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def body(self, request: Request, sampling: Sampling) -> dict:
        return {"model": self.name,
                "messages": chat_messages(request, lambda img: {"type": "image_url",
                                                                "image_url": {"url": data_url(img, self.max_pixels)}}),
                "max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "seed": sampling.seed}

    def _once(self, payload: bytes) -> Generation:
        req = urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            kind = "http_5xx" if exc.code >= 500 else "http_429" if exc.code == 429 else "http_4xx"
            raise GenerationError(kind, f"{self.url}: HTTP {exc.code}: {detail}") from None
        except TimeoutError:
            raise GenerationError("http_timeout", f"{self.url}: no answer within {self.timeout_s} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise GenerationError("http_timeout", f"{self.url}: no answer within {self.timeout_s} s") from None
            raise GenerationError("http_unreachable", f"{self.url}: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise GenerationError("http_unreachable", f"{self.url}: {exc}") from None
        try:
            answer = json.loads(raw)
            text = answer["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError("bad_response", f"{self.url}: not a chat completion ({exc}): {raw[:120]!r}") from None
        usage = answer.get("usage") or {}
        return Generation(text, int(usage.get("completion_tokens") or 0), usage.get("prompt_tokens"))

    def _with_retries(self, payload: bytes) -> Generation | GenerationError:
        retryable = {"http_5xx", "http_429", "http_timeout", "http_unreachable", "bad_response"}
        for attempt in range(self.retries + 1):
            try:
                return self._once(payload)
            except GenerationError as exc:
                if exc.error_class not in retryable or attempt == self.retries:
                    return exc
                time.sleep(self.backoff_s * 2 ** attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation | GenerationError]:
        # each request is encoded (JPEG + base64: CPU work that releases the GIL) on its pool thread
        return list(self._pool.map(lambda r: self._with_retries(json.dumps(self.body(r, sampling)).encode()),
                                   requests))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- vLLM offline ----------------------------------------------------------------------------------


class VLLMCaptioner(Captioner):
    """vLLM's offline engine on the actor's GPU(s); imported here only, never at module import."""

    backend = "vllm"

    def __init__(self, model: str, max_pixels: int = 448 * 448, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None):
        try:
            import vllm
        except ImportError as exc:
            raise BackendUnavailable(
                "the vllm backend needs vLLM, a CUDA-only package: install the gpu extra "
                "(pip install 'curation[gpu]') on a GPU machine, or use backend: openai against a vLLM server "
                f"({exc})") from None
        folder, self.weights = resolve_model(model)
        if folder is None:
            raise BackendUnavailable(f"{model} is a random-weight test model; vLLM loads real checkpoints only")
        self.name, self.max_pixels, self._vllm = model, max_pixels, vllm
        self.llm = vllm.LLM(model=folder, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            limit_mm_per_prompt={"image": 16})

    def _params(self, sampling: Sampling, choices: tuple[str, ...]):
        options: dict[str, Any] = {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                                   "top_p": sampling.top_p, "seed": sampling.seed}
        if choices:
            sp = self._vllm.sampling_params
            if hasattr(sp, "StructuredOutputsParams"):
                options["structured_outputs"] = sp.StructuredOutputsParams(choice=list(choices))
            else:
                options["guided_decoding"] = sp.GuidedDecodingParams(choice=list(choices))
        return self._vllm.SamplingParams(**options)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation | GenerationError]:
        messages = [chat_messages(r, lambda img: {"type": "image_url",
                                                  "image_url": {"url": data_url(img, self.max_pixels)}})
                    for r in requests]
        params = [self._params(sampling, r.choices) for r in requests]
        outs = self.llm.chat(messages, params, use_tqdm=False)
        results: list[Generation | GenerationError] = []
        for out in outs:
            if not out.outputs:
                results.append(GenerationError("no_output", f"{self.name}: vLLM returned no completion"))
                continue
            best = out.outputs[0]
            results.append(Generation(best.text, len(best.token_ids), len(out.prompt_token_ids or [])))
        return results

    def close(self) -> None:
        del self.llm
