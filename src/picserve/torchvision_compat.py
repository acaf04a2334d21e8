"""torchvision beside the CPU build of torch: import it without its compiled ops.

PyPI's Linux torchvision wheels are built against CUDA torch. Beside the CPU torch that `make install`
pins, their compiled library (`torchvision._C`) does not load; torchvision then carries on without its
ops, except that `torchvision._meta_registrations` registers fake kernels for `torchvision::nms` and
`torchvision::qnms` unconditionally, and `import torchvision` fails with "operator torchvision::nms
does not exist" (and with it spandrel, which imports torchvision, and transformers' image models).

`install()` puts a finder on `sys.meta_path` that acts only on that one module, and only when the
compiled ops did not load: before the module runs, it declares the two operators' schemas (no kernel),
so the registrations succeed. Nothing picserve runs calls them (spandrel's upscalers and rembg never
use non-maximum suppression); a call would fail with "no kernel", as it would on any torchvision
without its ops. With a matching torchvision (a CUDA host) the finder does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["install"]

_MODULE = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
#: the library the schemas are declared in, kept alive (a dropped Library removes its definitions)
_declared: list[Any] = []


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            _declare_missing_ops()
            run(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _declare_missing_ops() -> None:
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops() or _declared or hasattr(torch.ops.torchvision, "nms"):
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        library.define(schema)
    _declared.append(library)


def install() -> None:
    """Put the finder first on `sys.meta_path` (once); torchvision not yet imported."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
