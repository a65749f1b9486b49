"""Which stages one task runs: the fused groups of a job (docs/fused-stages.md, "One pass, the same rows").

A task of a job's stage runs that stage and the consecutive stages that fuse with it (``fused_refs``);
its run-time limit is the sum of theirs (``task_runtime_s``), whoever enqueues it: the submission and
``curation retry`` (the first/failed stage's tasks) as well as the runtime
(``workers.runtime.next_stage_of``). No database here: only the runtime and the supervisor reach it.
"""

from __future__ import annotations

from curation.spec import JobSpec
from workers.stage import get_stage


def fusable(spec: JobSpec, index: int) -> bool:
    """Whether the job's stage ``index`` may run inside a fused pass, on the CPU (no GPU in its class or the
    job's spec) and creating no assets:

    - in an image job, an image stage that loads no model (``Stage.model_free``) and takes at most the
      bytes, the decoded image and earlier results;
    - in a video job, a frame-sampled scene stage (``FrameSampledStage``), model stages included: what
      they share is the decode of each scene's frames, which costs more than most of their scoring.

    Scene splits, windows, GPU stages and the other stages keep their own pools and tasks."""
    cls = get_stage(spec.stages[index].name)
    if cls.resources.gpus > 0 or (spec.stages[index].gpus or 0) > 0:
        return False
    if cls.children_field is not None or cls.windowed or cls.pairs_field is not None:
        return False
    if spec.modality == "video":
        from workers.scene_frames import FrameSampledStage  # PyAV: only for video jobs

        return "video" in cls.modalities and issubclass(cls, FrameSampledStage)
    if spec.modality != "image" or "image" not in cls.modalities or cls.needs_path:
        return False
    return cls.embedding_model_param is None and cls.model_free(spec.stage_params(index))


def fused_refs(spec: JobSpec, index: int) -> list[str]:
    """The stages a task of the job's stage ``index`` runs: that stage and the fusable stages right
    after it when the job fuses (``fuse_cpu_stages``) and the stage itself is fusable; else the stage
    alone. An image group takes no stage that needs more CPUs than its first (they run on its actors);
    a video group's actors get the most CPUs any of its stages declares (``workers/supervisor.py``)."""
    refs = [s.name for s in spec.stages]
    end = index + 1
    if spec.fuse_cpu_stages and fusable(spec, index):
        cpus = get_stage(refs[index]).resources.cpus  # an image group runs on the first stage's actors
        while end < len(refs) and fusable(spec, end) and (
                spec.modality == "video" or get_stage(refs[end]).resources.cpus <= cpus):
            end += 1
    return refs[index:end]


def task_runtime_s(spec: JobSpec, index: int) -> float:
    """The run-time limit of a task of the job's stage ``index``: the sum of the limits of every stage
    it runs (``fused_refs``), so a fused group's task is not reclaimed while its later stages run."""
    return sum(get_stage(r).max_runtime_s for r in fused_refs(spec, index))
