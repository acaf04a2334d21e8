"""Task kind → the engine call that runs it: the worker's one dispatch table. No torch here.

A task is a tagged union of action specs (domain.ActionSpec); its kind picks the pipeline here. A
pipeline takes the worker's engine, the spec, and the step and preview callbacks (progress, cancel),
and returns the images to store (`Generated`). The generation pipeline is the engine's `generate`;
a new task kind registers its own (see docs/architecture.md: adding an action).
"""

from __future__ import annotations

from collections.abc import Callable

from picserve import domain
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback

__all__ = ["PIPELINES", "Pipeline", "register", "run"]

#: (engine, spec, on_step, on_preview) → the images; on the worker's engine thread
Pipeline = Callable[[GenerationEngine, domain.ActionSpec, StepCallback, PreviewCallback | None], Generated]


def _generate(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    assert isinstance(spec, domain.GenerationSpec)
    return engine.generate(spec, on_step, on_preview)


#: the pipeline of each task kind
PIPELINES: dict[str, Pipeline] = {domain.GenerationSpec.kind: _generate}


def register(kind: str, pipeline: Pipeline) -> None:
    """Run the tasks of `kind` with `pipeline` (a kind has one pipeline)."""
    known = PIPELINES.setdefault(kind, pipeline)
    if known is not pipeline:
        raise ValueError(f"task kind {kind!r} already has a pipeline")


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """Run `spec` with its kind's pipeline (on the engine thread)."""
    pipeline = PIPELINES.get(spec.kind)
    if pipeline is None:
        raise NotImplementedError(f"no pipeline runs task kind {spec.kind!r} in this worker")
    return pipeline(engine, spec, on_step, on_preview)
