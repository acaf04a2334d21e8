"""The CPU benches' memory figures from /proc/self (Linux): a status field in bytes, and the process's peak
RSS (VmHWM) reset to its current RSS, so the peak of what runs next can be read. Imported by the benches
beside it (bench/cutout.py, bench/toolkit.py, bench/controlnet.py, bench/memory.py)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["reset_peak", "status"]


def status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM, RssFile, …)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (5 written to /proc/self/clear_refs); the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return status("VmRSS")
