"""ImportModel → domain.ImportSpec: the request checked as `picserve models add` checks its options,
before anything is downloaded; the URL (when it carries credentials or a token-like query parameter)
and the AuthToken sealed with the server secret (keycipher), so that the task row holds neither in
clear. Only admin keys get here (submission.Kind.admin_only)."""

from __future__ import annotations

import re
import urllib.parse

from picserve import catalog, domain, errors, keycipher, modelfiles
from picserve.protocol import messages
from picserve.services import Services

__all__ = ["from_request"]


def from_request(request: messages.ImportModel, services: Services) -> domain.ImportSpec:
    url = request.Url.strip()
    parts = urllib.parse.urlsplit(url)
    # the URL is never echoed: it may carry a token
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise errors.ParamError("Url: must be an http:// or https:// URL with a host (local paths are not taken)")
    sha256 = None
    if request.Sha256 is not None:
        sha256 = request.Sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise errors.ParamError(f"Sha256: must be 64 hexadecimal digits (got {messages.shown(request.Sha256)})")
    if request.Kind is not None and request.Kind not in modelfiles.KINDS:
        raise errors.ParamError(
            f"Kind: must be one of {', '.join(modelfiles.KINDS)} (got {messages.shown(request.Kind)})"
        )
    if request.ModelCode is not None and not catalog.is_plain_code(request.ModelCode):
        raise errors.ParamError(
            f"ModelCode: must be a plain file name: no / or \\, not starting with '.' "
            f"(got {messages.shown(request.ModelCode)})"
        )
    source = modelfiles.source_label(url)
    cipher = keycipher.load(services.settings) if source != url or request.AuthToken else None
    return domain.ImportSpec(
        sealed_url=cipher.seal(url) if cipher is not None and source != url else url,
        sealed_token=cipher.seal(request.AuthToken) if cipher is not None and request.AuthToken else None,
        source=source,
        sha256=sha256,
        name=request.ModelCode,
        model_kind=request.Kind,
        force=request.Force,
    )
