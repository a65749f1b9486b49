"""Where a model runs: the GPU when the process can see one, else the CPU.

A Ray actor sees a GPU only when its stage asked for one (``resources.gpus`` of the stage, or ``gpus:``
on the stage in the job spec): Ray sets ``CUDA_VISIBLE_DEVICES`` per actor. So the declared resources
decide the placement, and the same code runs on a CPU-only machine."""

from __future__ import annotations


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def cpu_threads() -> int:
    """Intra-op threads a model session should use: the runtime sets ``OMP_NUM_THREADS`` to the actor's
    CPUs before models load (``workers.runtime.limit_model_threads``); elsewhere 1 unless the environment
    says otherwise. More threads than CPUs thrash under load."""
    import os

    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1
