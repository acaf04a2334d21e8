"""`picserve models pull-translation LANG…`: install a LANG→en model on a machine with internet.

Reads an Argos Translate package index (JSON: a list of packages with `from_code`, `to_code`, `links`),
downloads the `.argosmodel` package (a zip holding a CTranslate2 `model/` and `sentencepiece.model`),
checks it, and unpacks it as `<translation models>/<lang>-en/`, where the CT2 backend loads it directly.
The service itself never downloads anything.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import httpx

__all__ = ["DEFAULT_INDEX", "pull"]

DEFAULT_INDEX = "https://raw.githubusercontent.com/argosopentech/argospm-index/main/index.json"


class PullError(RuntimeError):
    pass


def pull(languages: list[str], target: Path, index_url: str = DEFAULT_INDEX, timeout: float = 600) -> list[Path]:
    """Install a LANG→en model for each language; returns the folders written."""
    with httpx.Client(timeout=timeout, follow_redirects=True) as http:
        index = http.get(index_url).raise_for_status().json()
        installed = []
        for language in languages:
            package = next((p for p in index if p.get("from_code") == language and p.get("to_code") == "en"), None)
            if package is None:
                available = sorted({p.get("from_code") for p in index if p.get("to_code") == "en"})
                raise PullError(f"no {language}→en package in the index (available: {', '.join(available)})")
            data = _download(http, package.get("links") or [])
            installed.append(_unpack(data, Path(target) / f"{language}-en"))
        return installed


def _download(http: httpx.Client, links: list[str]) -> bytes:
    errors = []
    for link in links:
        try:
            return http.get(link).raise_for_status().content
        except httpx.HTTPError as exc:
            errors.append(f"{link}: {exc}")
    raise PullError("download failed: " + "; ".join(errors or ["the package has no links"]))


def _unpack(data: bytes, folder: Path) -> Path:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise PullError("the downloaded package is not a zip archive") from None
    names = archive.namelist()
    model_bin = next((n for n in names if n.endswith(("model/model.bin", "/model.bin"))), None)
    if model_bin is None or not any(n.endswith((".model", ".spm")) for n in names):
        raise PullError("the package holds no CTranslate2 model with a SentencePiece vocabulary")
    if any(n.startswith("/") or ".." in Path(n).parts for n in names):
        raise PullError("the package has unsafe paths")
    root = model_bin.split("/")[0] + "/" if model_bin.count("/") > 1 else ""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        archive.extractall(staging)
        source = staging / root if root else staging
        shutil.rmtree(folder, ignore_errors=True)
        source.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
