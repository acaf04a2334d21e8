"""TaskUIDs in the 20-character `rs/xid` form PICPIK uses (e.g. `ckti5nf2h4keq8mr9n00`).

12 bytes: 4 of Unix time, 3 of machine id, 2 of process id, 3 of a counter; base32hex, lower case.
They sort by creation time and are unique across hosts without coordination.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import threading
import time

__all__ = ["new_xid"]

_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_MACHINE = hashlib.md5(socket.gethostname().encode()).digest()[:3]
_counter = itertools.count(secrets.randbelow(1 << 24))
_lock = threading.Lock()


def new_xid() -> str:
    with _lock:
        count = next(_counter) & 0xFFFFFF
    raw = (
        int(time.time()).to_bytes(4, "big")
        + _MACHINE
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + count.to_bytes(3, "big")
    )
    number = int.from_bytes(raw, "big") << 4  # 96 bits → 20 × 5 bits, the last padded
    return "".join(_ALPHABET[(number >> (5 * (19 - i))) & 31] for i in range(20))
