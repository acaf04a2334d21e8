"""Real processes for the tests that drive them: `picserve serve`, `picserve worker`, the `picserve` CLI
(`keys create` among its commands) and any other command, as a user or an operator runs them.

- `free_port()`: a free TCP port on loopback.
- `picserve(*args)`: run the CLI to its end (`CompletedProcess`, text); `create_key(...)`: `picserve keys
  create`, checked, as its JSON (`PublicKey`, `PrivateKey`, ...).
- `spawn(command, log=...)`: a long-running process whose stdout and stderr go to a log file;
  `serve(...)` starts `picserve serve` on a free port and waits until `/healthz` answers; `worker(...)`
  starts `picserve worker`. A `Process` stops with SIGTERM, then SIGKILL after a grace period
  (`stop()`), and keeps its output (`output()`) for the failure messages.
- `wait_for(predicate)`: the predicate's first truthy value, polled; AssertionError at the timeout.
- `executable=` (of `picserve_command`, `picserve`, `create_key`, `serve`): another environment's `picserve`
  script instead of this interpreter's `-m picserve` (tests/packaging runs an installed wheel's).

Nothing here comes from the product's own `picserve.demo` (its helpers are the demo's, not the tests').
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

__all__ = [
    "Process",
    "create_key",
    "free_port",
    "picserve",
    "picserve_command",
    "running",
    "serve",
    "spawn",
    "start_server",
    "wait_for",
    "wait_healthy",
    "worker",
]

T = TypeVar("T")

#: the environment the helpers use by default: this one, picserve's log level at `warning`
QUIET = {"PICSERVE_LOG_LEVEL": "warning"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked: a test binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition", every: float = 0.1) -> T:
    """`predicate()`'s first truthy value, polled every `every` seconds; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **QUIET} if env is None else dict(env)


def picserve_command(*args: object, executable: Path | str | None = None) -> list[str]:
    """The command line of `picserve ARGS` in this interpreter (the venv's picserve), or, with `executable`,
    that `picserve` script (another environment's, e.g. a wheel installed elsewhere: tests/packaging)."""
    head = [sys.executable, "-m", "picserve"] if executable is None else [str(executable)]
    return [*head, *map(str, args)]


def picserve(
    *args: object, env: Mapping[str, str] | None = None, timeout: float = 180, executable: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `picserve ARGS` to its end: its exit status, stdout and stderr (text). `env`: the whole
    environment (default: this process's, log level `warning`); `executable`: as `picserve_command`'s."""
    return subprocess.run(
        picserve_command(*args, executable=executable),
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def create_key(
    *options: object,
    name: str = "test",
    credits: int | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    executable: Path | str | None = None,
) -> dict[str, str]:
    """`picserve keys create --name NAME [--credits N] [--data-dir D] OPTIONS` in its own process,
    asserted to succeed; the key it printed (PublicKey, PrivateKey, ...). The database is the one
    `data_dir` (its embedded PostgreSQL) or `env` (PICSERVE_DATABASE_URL) names; `executable`: as
    `picserve_command`'s."""
    args: list[object] = ["keys", "create", "--name", name, *options]
    if credits is not None:
        args += ["--credits", credits]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    made = picserve(*args, env=env, timeout=120, executable=executable)
    assert made.returncode == 0, f"picserve keys create exited with {made.returncode}: {made.stderr}"
    key: dict[str, str] = json.loads(made.stdout.strip().splitlines()[-1])
    return key


@dataclass
class Process:
    """A subprocess whose stdout and stderr go to `log`."""

    popen: subprocess.Popen[bytes]
    log: Path
    #: http://127.0.0.1:PORT for a server, once started
    base: str = ""
    _closed: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        """The port of a server's `base`."""
        return int(self.base.rsplit(":", 1)[1])

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self, lines: int | None = None) -> str:
        """What the process wrote so far (its last `lines` lines)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def describe(self, lines: int = 40) -> str:
        """The command, its state and its output's tail: for failure messages."""
        state = "running" if self.popen.poll() is None else f"exited with {self.popen.returncode}"
        return f"{' '.join(map(str, self.popen.args))} ({state}); its last output:\n{self.output(lines)}"

    def signal(self, number: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(number)

    def kill(self, timeout: float = 10) -> int:
        """SIGKILL (a lost machine): nothing of it runs again; its exit status."""
        self.signal(signal.SIGKILL)
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL if it is still there after `timeout` s; its exit status. Idempotent."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        while self._closed:
            self._closed.pop()()
        return self.popen.returncode


def spawn(command: Sequence[object], log: Path, env: Mapping[str, str] | None = None) -> Process:
    """Start `command` with its stdout and stderr going to the file `log` (made, parents too)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    try:
        popen = subprocess.Popen(list(map(str, command)), env=_env(env), stdout=out, stderr=subprocess.STDOUT)
    except BaseException:
        out.close()
        raise
    return Process(popen, log, _closed=[out.close])


def wait_healthy(process: Process, base: str, timeout: float = 120) -> None:
    """Until `base`/healthz answers 200; AssertionError with the process's output when it exits first or
    the timeout passes."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as http:
        while True:
            if process.popen.poll() is not None:
                raise AssertionError(f"never healthy at {base}: {process.describe()}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{base}/healthz").status_code == 200:
                    process.base = base
                    return
            if time.monotonic() >= deadline:
                raise AssertionError(f"not healthy at {base} within {timeout:g} s: {process.describe()}")
            time.sleep(0.05)


def start_server(
    command: Sequence[object], port: int, log: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Process:
    """Start `command`, a server listening on 127.0.0.1:`port`, and wait until its /healthz answers
    (`process.base` is its URL); stopped again if it never gets there."""
    process = spawn(command, log, env)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}", timeout)
    except BaseException:
        process.stop(10)
        raise
    return process


def serve(
    *args: object,
    log: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 120,
    executable: Path | str | None = None,
) -> Process:
    """`picserve serve --host 127.0.0.1 --port PORT ARGS` (a free port unless `port`), healthy when this
    returns (`process.base` is its URL); `executable`: as `picserve_command`'s."""
    port = port or free_port()
    command = picserve_command("serve", "--host", "127.0.0.1", "--port", port, *args, executable=executable)
    return start_server(command, port, log, env, timeout)


def worker(*args: object, log: Path, env: Mapping[str, str] | None = None) -> Process:
    """`picserve worker ARGS` (the database from `env`'s PICSERVE_DATABASE_URL)."""
    return spawn(picserve_command("worker", *args), log, env)


@contextlib.contextmanager
def running(process: Process, timeout: float = 60) -> Iterator[Process]:
    """`process` for the block, stopped (SIGTERM, then SIGKILL) when it ends, however it ends."""
    try:
        yield process
    finally:
        process.stop(timeout)
