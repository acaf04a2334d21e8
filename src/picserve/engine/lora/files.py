"""What the LoRA mechanisms are given: a request's files (`SubFile`), the engine's file cache and its error
wording (`Files`), the PEFT adapter name of a file, and a plain LoRA's state dict checked against the model.

engine/adapters.py resolves a request's sub-models in the models folder and keeps their contents in a
bounded cache; it hands the LoRA files to apply.py and is itself the `Files` the mechanisms read them
through, so that every sub-model's error says the same things (what went wrong, that the main model was
left unchanged, what the client and the operator can do).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from picserve import errors
from picserve.engine.lora import lycoris

__all__ = ["Files", "SubFile", "adapter_name", "plain_state"]


class SubFile(Protocol):
    """A sub-model file of a request, found in the models folder (engine/adapters.py resolves them)."""

    @property
    def kind(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def weight(self) -> float: ...
    @property
    def version(self) -> tuple[int, int]:
        """(mtime_ns, size): a replaced file is loaded again."""
        ...


class Files(Protocol):
    """The sub-model files as the mechanisms read them (engine/adapters.py's `Adapters` is one)."""

    @property
    def models_dir(self) -> Path: ...

    def contents(self, sub: SubFile) -> Any:
        """The file's contents (a state dict), from the bounded in-memory cache when possible; a
        `ModelLoadError` naming it when it cannot be read."""
        ...

    def failed(self, sub: SubFile, what: str) -> errors.ModelLoadError:
        """The error for a file that cannot be used: `what` went wrong, and what to do about it."""
        ...


def adapter_name(code: str) -> str:
    """The PEFT adapter name of a LoRA file (also how the engine reports the LoRAs it holds)."""
    # PEFT adapter names end up in module paths: keep them to identifier characters.
    return "lora_" + re.sub(r"\W", "_", code)


def plain_state(files: Files, pipe: Any, lora: SubFile) -> dict[str, Any]:
    """A copy of a plain LoRA's state dict (diffusers pops keys from the dict it is given), refused
    when some of its layers match no layer of the model: diffusers would load the rest and skip
    these without a word; here it is all or nothing."""
    state = dict(files.contents(lora))
    missing = lycoris.unmatched_layers(state, pipe)
    if missing:
        listed = ", ".join(missing[:8]) + (f" … ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise files.failed(
            lora,
            f"could not be applied: {len(missing)} of its layers match no layer of this model "
            f"(made for another base model, or an unknown naming): {listed}",
        )
    return state
