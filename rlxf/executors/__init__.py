"""Where rollouts and rewards are computed: in-process (``local``, the default) or on Ray actors.

Both backends offer the same two calls to the online controller, ``sample`` and ``score``, and
derive every random stream from the same seeds, so a short run gives the same metrics on
either. ``local`` never imports Ray. Each says whether its generation engine's log-probs are
exact (``exact_logprobs``); when they are not, the controller recomputes them with the learner.
"""

from __future__ import annotations

from rlxf.core.cluster import ScaleSettings


def make_executor(scale: ScaleSettings | None = None, backend=None, threads: int | None = None):
    """The executor ``scale`` asks for (default: local, one shard). ``backend``: a
    :class:`~rlxf.executors.generation.GenerationBackend` class in place of ``scale.backend``;
    ``threads``: torch threads per Ray actor (default: the driver's)."""
    from rlxf.executors.generation import backend_class

    scale = scale or ScaleSettings()
    problems = scale.problems()
    if problems:
        raise ValueError("; ".join(problems))
    backend = backend or backend_class(scale.backend)
    if scale.executor == "ray":
        from rlxf.executors.ray_backend import RayExecutor

        return RayExecutor(scale, backend=backend, threads=threads)
    from rlxf.executors.local import LocalExecutor

    return LocalExecutor(shards=scale.rollout_workers, backend=backend)
