"""`picserve models add FOLDER` and `models info FOLDER`: the image tools' models that are folders, filed.

A point segmenter (SAM, SlimSAM) and a captioner (BLIP, Florence-2, GIT) come as the folder transformers'
`save_pretrained` writes (config.json, the weights, the processor's files), as their Hugging Face repos
hold them; a WD-style tagger as a folder with `model.onnx` and `selected_tags.csv`. Such a folder is
checked the way a worker loads it (`identify`: engine/toolfiles.identify, which loads it with
transformers or onnxruntime) and copied whole into `models/<kind>/<code>/`, with a sidecar
`<code>.json` (Source; what `identify` found) beside it. The copy is staged under `models/.downloads`
and renamed into place, so a worker never sees half a folder.

No torch here: the CLI imports `identify` only when a folder is added.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from picserve import catalog, errors, modelinfo
from picserve.modelfiles import SIDECAR_MODE, Added, Inspection, source_label

__all__ = ["FOLDER_KINDS", "add", "inspect"]

#: the kinds whose models are folders
FOLDER_KINDS = tuple(catalog.FOLDER_MARKERS)
#: a folder's files together at most (a SAM ViT-H is 2.6 GB, Florence-2 large 1.6 GB)
_MAX_BYTES = 64 << 30


def inspect(folder: Path, identify: Callable[[Path], modelinfo.ToolFacts]) -> Inspection:
    """What `folder` is as `identify` finds it: kind "segment" or "caption", or the problem."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    size = sum(p.stat().st_size for p in files)
    if not folder.is_dir():
        return Inspection(folder, 0, "folder", problem=f"{folder} is not a folder")
    if size > _MAX_BYTES:
        return Inspection(folder, size, "folder", problem=f"{folder} holds {size:,} bytes, more than a model folder")
    facts = identify(folder)
    details = {**facts.details, "files": len(files)}
    if facts.kind not in FOLDER_KINDS:
        problem = facts.problem or f"a {facts.kind} model is a file, not a folder"
        return Inspection(folder, size, "folder", details=details, problem=problem)
    return Inspection(folder, size, "folder", kind=facts.kind, details={**details, "sidecar": dict(facts.sidecar)})


def add(
    source: Path,
    models_dir: Path,
    *,
    identify: Callable[[Path], modelinfo.ToolFacts],
    name: str | None = None,
    kind: str | None = None,
    force: bool = False,
) -> Added:
    """Check the folder `source` and copy it into `<models_dir>/<kind>/<code>/` with its sidecar; PullError
    with a one-line message for every refusal (nothing is left in the models folder then)."""
    source, models_dir = Path(source).expanduser(), Path(models_dir)
    found = inspect(source, identify)
    if found.problem:
        raise errors.PullError(f"refused: {found.problem}")
    assert found.kind is not None
    if kind is not None and kind != found.kind:
        raise errors.PullError(f"refused: --kind {kind}, but the folder is a {found.kind} model")
    code = name or source.name
    if not catalog.is_plain_code(code):
        raise errors.PullError(f"{code!r} cannot name a model: use --name with a plain name (no '/', not hidden)")
    folder = models_dir / found.kind
    target, sidecar = folder / code, folder / f"{code}.json"
    if target.exists() and not force:
        raise errors.PullError(f"{target} exists: pass --force to replace it, or pick another --name")
    staging = models_dir / ".downloads" / f"{code}.{os.getpid()}.folder"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, symlinks=False)
        folder.mkdir(parents=True, exist_ok=True)
        _write_sidecar(sidecar, {"Source": source_label(str(source)), **found.details.get("sidecar", {})}, force)
        if target.exists():  # --force: the old folder leaves only once the new one is complete
            old = staging.with_suffix(".old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        raise errors.PullError(f"could not file {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Added(found.kind, code, target, sidecar, found)


def _write_sidecar(path: Path, facts: dict[str, Any], force: bool) -> None:
    """The sidecar with `facts`; keys already there are kept unless `force`."""
    meta: dict[str, Any] = {}
    if path.exists():
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise errors.PullError(f"{path} is not readable JSON ({exc}): fix or remove it") from None
    meta.update({k: v for k, v in facts.items() if force or k not in meta})
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    os.chmod(path, SIDECAR_MODE)
