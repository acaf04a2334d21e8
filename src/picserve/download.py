"""Fetching a model file for `picserve models add`: HTTP(S) with resume, or a local copy.

A download streams into `<staging>/<hash of the URL>.part`, hashing as it goes. A `.part` left by an
interrupted run is continued with `Range: bytes=N-` (and `If-Range` with the validator the first
answer gave, so a file changed on the server starts over rather than being spliced):

    206 with `Content-Range: bytes N-…/TOTAL`     append
    206 whose range does not start at N           start over (the server answered another range)
    200 although a range was asked                start over (the server ignores Range)
    416                                           the `.part` is complete when TOTAL is its size, else start over

A dropped connection is resumed the same way, `retries` times; past that the `.part` stays for the next
run. A local file is hard-linked into the staging folder when it is on the same filesystem, else
copied. Every failure is an `errors.PullError` whose message is one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from picserve import errors

__all__ = ["Fetched", "OnProgress", "copy_local", "discard", "fetch", "is_url", "part_path", "sha256_of"]

_CHUNK = 1 << 20

#: (bytes in the staged file so far, the file's size or None when the server does not say it)
OnProgress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Fetched:
    #: the staged file (a `.part` for a download, a hidden temporary file for a local copy)
    path: Path
    #: hex SHA-256 of its bytes
    sha256: str
    #: the file name the source gives: the URL's last path segment, Content-Disposition's, or the local name
    filename: str
    #: the bytes that came over the network in this run (a resumed download: only the rest)
    transferred: int
    #: whether `path` is a resumable download (kept when the network fails, removed when the file is refused)
    resumable: bool


def is_url(source: str) -> bool:
    """Whether `source` is an http(s) URL rather than a local path."""
    return source.lower().startswith(("http://", "https://"))


def part_path(staging: Path, url: str) -> Path:
    """Where the download of `url` is staged: one `.part` per URL, so a rerun finds it and resumes."""
    return Path(staging) / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.part"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str,
    staging: Path,
    *,
    retries: int = 3,
    progress: bool = True,
    timeout: float = 60,
    client: httpx.Client | None = None,
    headers: Mapping[str, str] | None = None,
    on_progress: OnProgress | None = None,
    max_bytes: int | None = None,
) -> Fetched:
    """Download `url` into `staging`, resuming a `.part` an earlier run left.

    `headers` go with every request to the URL's own origin (e.g. `Authorization: Bearer …`; httpx drops
    Authorization on a redirect to another host, such as a hub's CDN). `on_progress` is told the bytes
    so far as they arrive (it may raise, e.g. to cancel: the `.part` stays for a resume). A file over
    `max_bytes` is refused: by its Content-Length before anything is written, else once the bytes received
    pass it; its `.part` is removed then.

    Raises errors.PullError: an HTTP error status, a network failure after `retries` resumes (the `.part`
    stays), or another `picserve models add` downloading the same URL.
    """
    part = part_path(staging, url)
    meta_path = part.with_suffix(".json")
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(part, "ab"))
            try:  # two runs appending to one .part would corrupt it
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise errors.PullError(f"another `picserve models add` is downloading {url}") from None
            http = client or stack.enter_context(
                httpx.Client(timeout=timeout, follow_redirects=True, headers=dict(headers or {}))
            )
            bar = stack.enter_context(_progress(progress, _capped(url, on_progress, max_bytes)))
            meta = _read_meta(meta_path)
            transferred = 0
            for attempt in range(retries + 1):
                try:
                    transferred += _get(http, url, out, meta, meta_path, bar)
                    break
                except httpx.TransportError as exc:
                    if attempt == retries:
                        raise errors.PullError(
                            f"download of {url} interrupted after {part.stat().st_size} bytes ({_describe(exc)}); "
                            "run the same command again to resume"
                        ) from exc
        sha256 = sha256_of(part)  # after the lock: the bytes on disk, whatever the runs that wrote them
    except _TooLarge as exc:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise errors.PullError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise errors.PullError(f"download of {url} failed: {_describe(exc)}") from exc
    except OSError as exc:
        raise errors.PullError(f"download of {url} could not be written to {part}: {exc}") from exc
    return Fetched(part, sha256, str(meta.get("filename") or _url_filename(url)), transferred, resumable=True)


class _TooLarge(Exception):
    """The file is larger than the download's limit (its message says so)."""


def _capped(url: str, on_progress: OnProgress | None, max_bytes: int | None) -> OnProgress | None:
    """`on_progress`, first refusing a file over `max_bytes` (by its announced size, or the bytes so far)."""
    if not max_bytes:
        return on_progress

    def check(done: int, total: int | None) -> None:
        if (total or 0) > max_bytes or done > max_bytes:
            size = f"{total:,} bytes" if total else f"more than {done:,} bytes"
            raise _TooLarge(f"download of {url}: the file is {size}, over the limit of {max_bytes:,} bytes")
        if on_progress is not None:
            on_progress(done, total)

    return check


def discard(fetched: Fetched) -> None:
    """Remove a staged file and, for a download, what was kept to resume it."""
    fetched.path.unlink(missing_ok=True)
    if fetched.resumable:
        fetched.path.with_suffix(".json").unlink(missing_ok=True)


def copy_local(source: Path, staging: Path) -> Fetched:
    """Stage a local file: a hard link when `staging` is on its filesystem, else a copy.

    Raises errors.PullError: the file is missing, not a file, or cannot be read or staged.
    """
    source = Path(source)
    if not source.is_file():
        raise errors.PullError(f"{source}: no such file" if not source.exists() else f"{source}: not a file")
    target = Path(staging) / f".{uuid.uuid4().hex}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, target)
        return Fetched(target, sha256_of(target), source.name, 0, resumable=False)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise errors.PullError(f"{source} could not be staged in {staging}: {exc}") from exc


# --- one request ------------------------------------------------------------------------------
def _get(http: httpx.Client, url: str, out: IO[bytes], meta: dict[str, Any], meta_path: Path, bar: _Bar) -> int:
    """One GET that continues `out` (truncated first when the answer says start over); returns the bytes written."""
    have = out.tell()
    headers = {"Accept-Encoding": "identity"}  # ranges and lengths count the file's own bytes
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator := meta.get("etag") or meta.get("last_modified"):
            headers["If-Range"] = validator
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:
            total = _total(response.headers.get("content-range"))
            if total == have:  # the .part already holds the whole file
                bar.start(url, total, have)
                return 0
            return _restart(http, url, out, meta, meta_path, bar)
        if response.status_code == 206 and have:
            start, total = _content_range(response.headers.get("content-range"))
            if start != have:
                return _restart(http, url, out, meta, meta_path, bar)
        elif response.status_code == 200:
            if have:  # the server ignored Range (or If-Range said the file changed): start over
                out.seek(0)
                out.truncate()
            total = _int(response.headers.get("content-length"))
            _write_meta(meta, meta_path, url, response)
        else:
            reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            raise errors.PullError(f"download of {url} failed: {reason}")
        bar.start(url, total, out.tell())
        written = 0
        for chunk in response.iter_raw():  # as it arrives: a cut connection loses nothing received
            out.write(chunk)
            written += len(chunk)
            bar.advance(len(chunk))
        out.flush()
    if total is not None and out.tell() != total:
        raise errors.PullError(f"download of {url}: the server sent {out.tell()} bytes of {total}")
    return written


def _restart(http: httpx.Client, url: str, out: IO[bytes], meta: dict[str, Any], meta_path: Path, bar: _Bar) -> int:
    out.seek(0)
    out.truncate()
    meta.clear()
    return _get(http, url, out, meta, meta_path, bar)


def _write_meta(meta: dict[str, Any], meta_path: Path, url: str, response: httpx.Response) -> None:
    """Keep what a resume needs: the validator for If-Range (a strong ETag or Last-Modified) and the file name."""
    etag = response.headers.get("etag")
    meta.clear()
    meta.update(
        etag=etag if etag and not etag.startswith("W/") else None,  # If-Range takes strong validators only
        last_modified=response.headers.get("last-modified"),
        filename=_disposition_filename(response.headers.get("content-disposition")) or _url_filename(str(response.url)),
    )
    meta_path.write_text(json.dumps(meta))


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes START-END/TOTAL` → (START, TOTAL); (None, None) when absent or malformed."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _total(value: str | None) -> int | None:
    """A 416's `bytes */TOTAL` → TOTAL."""
    m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", value or "")
    return int(m.group(1)) if m else None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _disposition_filename(value: str | None) -> str | None:
    """Content-Disposition's `filename*=UTF-8''…` (RFC 6266) or `filename="…"`."""
    if not value:
        return None
    if m := re.search(r"filename\*\s*=\s*([\w-]+)''([^;]+)", value, re.IGNORECASE):
        return urllib.parse.unquote(m.group(2).strip(), encoding=m.group(1) or "utf-8", errors="replace")
    if m := re.search(r'filename\s*=\s*"([^"]*)"|filename\s*=\s*([^;\s]+)', value, re.IGNORECASE):
        return m.group(1) if m.group(1) is not None else m.group(2)
    return None


def _url_filename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])


def _describe(exc: Exception) -> str:
    return str(exc).replace("\n", " ") or type(exc).__name__


# --- progress ------------------------------------------------------------------------------------
class _Bar:
    """A rich progress bar on stderr, drawn only on a terminal; and the caller's `on_progress`."""

    def __init__(self, progress: Progress | None, on_progress: OnProgress | None = None) -> None:
        self._progress = progress
        self._task: Any = None
        self._on_progress = on_progress
        self._done: int = 0
        self._total: int | None = None

    def start(self, url: str, total: int | None, done: int) -> None:
        self._done, self._total = done, total
        if self._on_progress is not None:
            self._on_progress(done, total)
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(_url_filename(url) or url, total=total, completed=done)
        else:
            self._progress.update(self._task, total=total, completed=done)

    def advance(self, n: int) -> None:
        self._done += n
        if self._on_progress is not None:
            self._on_progress(self._done, self._total)
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)


@contextlib.contextmanager
def _progress(enabled: bool, on_progress: OnProgress | None = None) -> Iterator[_Bar]:
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield _Bar(None, on_progress)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield _Bar(progress, on_progress)
