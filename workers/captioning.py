"""What the text stages share (caption, video_caption, domain, video_domain, caption_variants): the
captioner params (backend, model, server, sampling) and ``CaptionerStage``, which loads the captioner of
``models.captioner`` once per instance and makes the backend, the model and its weights identity part of
the stage's configuration — a caption made by one model is never reused for a job that asks for another.

The backend's transport settings (``api_key_env``, ``concurrency``, ``request_timeout_s``, ``retries``,
``retry_backoff_s``)
bound the run, not the text: they are ``run_params``, outside the configuration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.stage import ItemFailure, P, R, Stage, StageConfig

DEFAULT_VLM = "qwen2.5-vl-32b-instruct"  # report §4.2 (Russian captions), §4.6 (SFT captions, domains)


class CaptionerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    backend: Literal["transformers", "openai", "vllm"] = Field(
        "transformers", description="transformers (CPU or GPU), openai (an OpenAI-compatible server), vllm (offline)")
    model: str = Field(DEFAULT_VLM, min_length=1,
                       description="registry name or local folder (transformers, vllm); the served model name (openai)")
    base_url: str | None = Field(None, description="openai: the server's base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="openai: the environment variable with the API key")
    concurrency: int = Field(8, ge=1, le=512, description="openai: requests in flight per actor")
    request_timeout_s: float = Field(120.0, gt=0, description="openai: seconds per request")
    retries: int = Field(3, ge=0, le=10, description="openai: retries of a timeout, 429/5xx or malformed answer")
    retry_backoff_s: float = Field(1.0, ge=0, le=60, description="openai: first back-off; doubles per retry, jittered")
    max_tokens: int = Field(512, ge=1, le=32768, description="generated tokens at most")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding")
    seed: int = Field(0, description="sampling seed (temperature > 0)")
    max_pixels: int = Field(448 * 448, ge=28 * 28 * 4, le=4096 * 4096, description="pixels per image or frame")

    @model_validator(mode="after")
    def _model_for_backend(self):
        if self.backend == "openai":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("backend openai needs base_url (http:// or https://, e.g. http://host:8000/v1)")
            return self
        if self.base_url is not None:
            raise ValueError(f"base_url is for backend openai, not {self.backend}")
        if not Path(self.model).is_dir():
            from models.qwen_vl import TINY
            from models.registry import check_model

            check_model(self.model, "vlm", tiny=TINY, what="captioning model (or a local model folder)")
        return self


CAPTIONER_RUN_PARAMS = frozenset({"timeout_s", "api_key_env", "concurrency", "request_timeout_s", "retries",
                                  "retry_backoff_s"})


def prompt_version(name: str, *prompts: str) -> str:
    """``<name>:<sha256 of the prompts, 12 hex>``: which prompt text made a stored answer."""
    return f"{name}:{hashlib.sha256(chr(0).join(prompts).encode()).hexdigest()[:12]}"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CaptionerStage(Stage[P, R]):
    """A stage that asks a captioner (``self.captioner``, set up from ``CaptionerParams``)."""

    run_params = CAPTIONER_RUN_PARAMS

    @classmethod
    def models_for(cls, params: BaseModel) -> tuple[str, ...]:
        from models.qwen_vl import TINY
        from models.registry import REGISTRY

        return (params.model,) if params.backend != "openai" and params.model != TINY and params.model in REGISTRY else ()

    def config(self) -> StageConfig:
        """The base configuration plus the weights identity of a local model folder or a served model."""
        from models.captioner import model_identity

        base = super().config()
        p = self.params
        if p.backend == "openai" or Path(p.model).is_dir():
            return StageConfig(base.stage, base.stage_version, base.params,
                               {**base.models, p.model: model_identity(p.backend, p.model, p.base_url)})
        return base

    def setup(self) -> None:
        from models.captioner import make_captioner

        p = self.params
        self.captioner = make_captioner(p.backend, p.model, max_pixels=p.max_pixels, base_url=p.base_url,
                                        api_key_env=p.api_key_env, concurrency=p.concurrency,
                                        timeout_s=p.request_timeout_s, retries=p.retries,
                                        backoff_s=p.retry_backoff_s)

    def teardown(self) -> None:
        self.captioner.close()
        del self.captioner

    def sampling(self, **override):
        from models.captioner import Sampling

        p = self.params
        values = {"max_tokens": p.max_tokens, "temperature": p.temperature, "seed": p.seed, **override}
        return Sampling(**values)

    def ask(self, requests: list, **sampling) -> list:
        """Each request's ``Generation`` or ``ItemFailure`` (the backend's error class)."""
        from models.captioner import GenerationError

        out = self.captioner.generate(requests, self.sampling(**sampling))
        return [ItemFailure(g.error_class, str(g)) if isinstance(g, GenerationError) else g for g in out]


def scene_frame_groups(stage, items) -> tuple[list, list[list], list[int]]:
    """For a frame-sampled text stage: (results so far — an ItemFailure or None per item —, the PIL frames
    of each decodable scene, their positions), so that all scenes of a batch go to the captioner at once."""
    from PIL import Image

    from workers.scene_frames import scene_frames

    out: list = []
    groups: list[list] = []
    where: list[int] = []
    for item in items:
        frames = scene_frames(item, stage.name, stage.times, timeout_s=stage.params.timeout_s,
                              **stage.decode_options(item))
        if isinstance(frames, ItemFailure):
            out.append(frames)
            continue
        where.append(len(out))
        out.append(None)
        groups.append([Image.fromarray(f.pixels) for f in frames])
    return out, groups, where
