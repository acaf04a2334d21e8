"""The worker's side of ImportModel: open the sealed URL and token, download and file the model, and
report the bytes as the task's progress (a cancel stops the download at its next chunk; the `.part`
stays, so the task's next run, or `picserve models add` of the same URL, resumes it)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from picserve import domain, errors, keycipher, modelfiles
from picserve.config import Settings
from picserve.engine.base import Generated, StepCallback

__all__ = ["WorkerAction", "actions", "run"]

#: (spec, on_step) → the result: a task kind a worker runs itself, with what it was configured with
WorkerAction = Callable[[domain.ActionSpec, StepCallback], Generated]

#: the fraction of progress the download may reach; the checks and the filing take the rest
_DOWNLOAD_SHARE = 0.95


def actions(settings: Settings) -> dict[str, WorkerAction]:
    """The task kinds this package runs in a worker of `settings`, by kind."""
    return {domain.ImportSpec.kind: functools.partial(run, settings)}


def run(settings: Settings, spec: domain.ActionSpec, on_step: StepCallback) -> Generated:
    """Download and file `spec`'s model in `settings.models_dir`; the result's texts say what was filed
    (`models add`'s line) and its warnings. Raises ImportFailed with a message that holds no secret."""
    assert isinstance(spec, domain.ImportSpec)
    url, token = _opened(spec, settings)

    def progress(done: int, total: int | None) -> None:  # may raise TaskCanceled: the download stops
        on_step(min(done / total, 1.0) * _DOWNLOAD_SHARE if total else 0.0)

    from picserve.engine import toolfiles  # torch and spandrel: a worker's, never the API's

    try:
        added = modelfiles.add(
            url,
            settings.models_dir,
            sha256=spec.sha256,
            name=spec.name,
            kind=spec.model_kind,
            force=spec.force,
            progress=False,
            identify=toolfiles.identify,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            on_progress=progress,
            max_bytes=settings.import_max_bytes or None,
        )
    except errors.PullError as exc:
        raise errors.ImportFailed(_redacted(exc.message, url, spec.source, token)) from None
    on_step(1.0)
    warnings = [f"warning: {w}" for w in added.warnings]
    return Generated([], [], [], texts=[modelfiles.summary(added), *warnings])


def _opened(spec: domain.ImportSpec, settings: Settings) -> tuple[str, str | None]:
    """The URL and token in clear (in memory only)."""
    if not keycipher.is_sealed(spec.sealed_url) and spec.sealed_token is None:
        return spec.sealed_url, None
    cipher = keycipher.existing(settings)
    if cipher is None:
        raise errors.ImportFailed(
            f"this worker has no server secret to open the import of {spec.source} with (its token, or its URL's "
            "credentials, are sealed): give the worker the API's PICSERVE_SECRET_KEY, or its data folder's "
            "secret.key, and submit it again"
        )
    try:
        url = cipher.open(spec.sealed_url)
        token = cipher.open(spec.sealed_token) if spec.sealed_token is not None else None
    except errors.PicserveError:
        raise errors.ImportFailed(
            f"the import of {spec.source} was sealed with a server secret this worker does not have: every API "
            "node and worker must share PICSERVE_SECRET_KEY (or the data folder's secret.key)"
        ) from None
    return url, token


def _redacted(message: str, url: str, source: str, token: str | None) -> str:
    """A failure's message as it may be stored and shown: the URL as its label, no token."""
    message = message.replace(url, source)
    return message.replace(token, "<AuthToken>") if token else message
