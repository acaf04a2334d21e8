"""Memory-aware admission: how much memory a generation needs, and how to run it so that it fits. No torch.

A generation's peak device memory is the main model's weights plus the larger of two phases, which do
not overlap (the UNet's activations are freed before the decode):

- denoising: the UNet's activations for a chunk of images (each image is a pair of latents under
  classifier-free guidance): linear in the output pixels with CUDA's SDPA kernels (no attention matrix
  is held whole), with a quadratic part on the CPU, whose SDPA holds part of it;
- decoding: the VAE decode of the chunk's latents, linear in the pixels too, and by far the larger
  per pixel; diffusers' tiled decode bounds it (one 1024² tile at a time for SDXL, plus the output
  image), and slicing decodes one image of the chunk at a time.

`PROFILES` holds the bytes per output pixel of each phase, measured on SDXL's full-size architecture by
`bench/memory.py` on the CPU (docs/performance.md, "Memory by output size"), rounded up. CUDA's are
derived until a GPU run replaces them: the UNet in fp16 takes half the CPU's fp32 bytes per pixel and
no quadratic part, and SDXL's VAE decodes upcast to fp32 (its config forces the upcast: fp16
overflows), the CPU's figure.

The worker plans each generation before it runs (`plan`): the largest chunk of the batch whose
estimate fits the memory free on its device, VAE slicing when the chunk's decode does not fit whole,
tiled decoding when one image's does not, or above 1280² pixels as before. The API refuses at submit a
request that no live worker could fit even so (`minimum` against each worker's device memory, see
specs/generation.py); with no worker registered it queues it (one may come). Out of
memory all the same (the estimate is a model, fragmentation is real) is still caught by engine/memory.py.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from picserve import modelinfo

__all__ = [
    "PROFILES",
    "Plan",
    "Profile",
    "budgets",
    "cgroup_memory_limit",
    "minimum",
    "model_bytes",
    "parse_amount",
    "plan",
    "profile_for",
    "shown",
    "usable_memory",
]

#: above this many output pixels the VAE always decodes in tiles (as the engine has done so far)
TILED_VAE_PIXELS = 1280 * 1280


@dataclass(frozen=True)
class Profile:
    """Peak memory per output pixel of SDXL's phases on one kind of device, in bytes."""

    #: UNet activations per pixel per image (its CFG pair of latents included) ...
    unet_per_pixel: float
    #: ... plus this per pixel² (attention that holds part of its score matrix: the CPU's SDPA does;
    #: CUDA's flash and memory-efficient kernels do not)
    unet_per_pixel2: float
    #: untiled VAE decode per pixel per image
    vae_per_pixel: float
    #: tiled VAE decode: tiles of this many output pixels are decoded one after another (diffusers
    #: tiles at the VAE config's sample_size, 1024 px for SDXL: an image up to 1024² is one tile) ...
    vae_tile_pixels: int
    #: ... and the decoded tiles and their blended output are kept: this per pixel of the whole image
    vae_tiled_per_pixel: float
    #: what every generation adds whatever its size: prompt encodings, scheduler state, allocator slack
    overhead: int
    #: bytes of one weight in the device's compute dtype
    weight_bytes: int


#: measured by bench/memory.py on SDXL base's architecture (docs/performance.md, "Memory by size")
PROFILES = {
    "cpu": Profile(
        unet_per_pixel=200.0,
        unet_per_pixel2=8e-4,
        vae_per_pixel=3900.0,
        vae_tile_pixels=1024 * 1024,
        vae_tiled_per_pixel=40.0,
        overhead=512 * 2**20,
        weight_bytes=4,
    ),
    "cuda": Profile(
        unet_per_pixel=100.0,
        unet_per_pixel2=0.0,
        vae_per_pixel=3900.0,
        vae_tile_pixels=1024 * 1024,
        vae_tiled_per_pixel=40.0,
        overhead=512 * 2**20,
        weight_bytes=2,
    ),
}


def profile_for(device: str) -> Profile:
    """The profile of a torch device name ("cuda:1", "cpu", "mps"...): CUDA's for every accelerator
    that runs fp16, the CPU's otherwise."""
    return PROFILES["cpu" if device.split(":")[0] == "cpu" else "cuda"]


@dataclass(frozen=True)
class Plan:
    """How one generation runs: its chunks of images, its VAE decode, and the peak this is estimated at."""

    chunk: int
    #: decode the chunk one image at a time
    slice_vae: bool
    tiled_vae: bool
    #: estimated peak bytes above the model's weights
    peak: int
    #: whether `peak` fits the memory the plan was made for
    fits: bool


def _denoise(profile: Profile, pixels: int, images: int) -> float:
    return (profile.unet_per_pixel * pixels + profile.unet_per_pixel2 * pixels**2) * images


def _decode(profile: Profile, pixels: int, images: int, tiled: bool) -> float:
    if tiled:
        tile = min(pixels, profile.vae_tile_pixels)
        return (profile.vae_per_pixel * tile + profile.vae_tiled_per_pixel * pixels) * images
    return profile.vae_per_pixel * pixels * images


def _peak(profile: Profile, pixels: int, chunk: int, slice_vae: bool, tiled: bool) -> int:
    decoded = 1 if slice_vae else chunk
    return int(profile.overhead + max(_denoise(profile, pixels, chunk), _decode(profile, pixels, decoded, tiled)))


def plan(
    width: int,
    height: int,
    batch: int,
    max_chunk: int,
    available: int | None,
    profile: Profile,
    seamless: bool = False,
) -> Plan:
    """The plan for `batch` images of `width`×`height` with `available` bytes free beyond the model's
    weights (None: unknown, so only `max_chunk` and the size bound the plan).

    Preferred, in order: the whole chunk of `max_chunk` decoded at once; the decode sliced one image at
    a time; tiled decoding (never for a seamless request, whose seams tiles would break); then smaller
    chunks. A plan that does not fit even one image at a time is returned with `fits` False.
    """
    pixels = width * height
    tiled_always = pixels > TILED_VAE_PIXELS and not seamless
    decodes = [(False, False), (True, False)] if seamless else [(False, tiled_always), (True, tiled_always)]
    if not seamless and not tiled_always:
        decodes.append((True, True))
    largest = max(1, min(batch, max_chunk))
    candidates = [(chunk, s, t) for chunk in range(largest, 0, -1) for s, t in decodes if not (s and chunk == 1)]
    if available is not None:
        for chunk, slice_vae, tiled in candidates:
            peak = _peak(profile, pixels, chunk, slice_vae, tiled)
            if peak <= available:
                return Plan(chunk, slice_vae, tiled, peak, True)
    chunk, slice_vae, tiled = candidates[0] if available is None else candidates[-1]
    return Plan(chunk, slice_vae, tiled, _peak(profile, pixels, chunk, slice_vae, tiled), available is None)


def minimum(width: int, height: int, weights: int, profile: Profile, seamless: bool = False) -> int:
    """The least device memory any plan needs for one image of `width`×`height` on a model of
    `weights` bytes: the model, one image's denoising, its decode tiled (untiled when seamless)."""
    one = plan(width, height, 1, 1, 0, profile, seamless)
    return weights + one.peak


def model_bytes(path: Path, weight_bytes: int) -> int:
    """The bytes a main model's weights take in memory at `weight_bytes` per weight, from its file's
    (or its diffusers folder's) tensor shapes; read once per file version. 0 when they cannot be read."""
    try:
        files = sorted(_weight_files(path)) if path.is_dir() else [path]
        versions = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except OSError:
        return 0
    return _parameters(versions) * weight_bytes


def _weight_files(folder: Path) -> list[Path]:
    """A diffusers folder's weight files: one variant per component (fp16 ones stand for the same weights);
    a one-model folder (a ControlNet's) has them at its top."""
    found: list[Path] = []
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "."):
        if part == "." and found:
            break
        files = sorted((folder / part).glob("*.safetensors")) or sorted((folder / part).glob("*.bin"))
        plain = [f for f in files if ".fp16." not in f.name] or files
        shards = [f for f in plain if re.search(r"-\d+-of-\d+\.", f.name)]
        found += shards or plain[:1]
    return found


@functools.lru_cache(maxsize=256)
def _parameters(versions: tuple[tuple[str, int, int], ...]) -> int:
    total = 0
    for name, _mtime, _size in versions:
        try:
            shapes, _ = modelinfo.read_shapes(Path(name))
        except Exception:  # a file the catalog flags as unreadable: no estimate rather than an error
            return 0
        for shape in shapes.values():
            count = 1
            for dim in shape:
                count *= int(dim)
            total += count
    return total


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
_UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_amount(text: str, total: int | None) -> int:
    """An amount of memory as settings give it: bytes with an optional unit ("12GiB", "8000 MB",
    "24g"), or a fraction of `total` ("0.7"; a number below 1 or ending in %: "70%").

    Raises ValueError naming what is accepted."""
    value = text.strip().lower().replace(" ", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[a-z]*)", value)
    if match is None or (match[2] not in _UNITS and match[2] != "%"):
        raise ValueError(
            f"{text!r} is not an amount of memory: give bytes with a unit (12GiB, 8000MB) or a fraction (0.7, 70%)"
        )
    number = float(match[1])
    if match[2] == "%" or (match[2] == "" and 0 < number < 1):
        if total is None:
            raise ValueError(f"{text!r} is a fraction, and this device's memory is unknown: give bytes (12GiB)")
        fraction = number / 100 if match[2] == "%" else number
        if not 0 < fraction <= 1:
            raise ValueError(f"{text!r}: a fraction of the device's memory is in (0, 1]")
        return int(total * fraction)
    return int(number * _UNITS[match[2]])


def budgets(
    model_memory: str, host_memory: str, device_type: str, device_total: int, ram_total: int, gpus: int
) -> tuple[int | None, int]:
    """(device, host) byte budgets for main models from PICSERVE_MODEL_MEMORY and
    PICSERVE_MODEL_HOST_MEMORY ("auto", "none", bytes, or a fraction of the device / of the RAM).

    "auto": 60% of a GPU's memory (the rest for activations: 1024² in chunks of 4 needs about 6 GiB in
    fp16), 50% of the RAM for a CPU worker; the host tier half the RAM shared among the `gpus` GPUs,
    none for a CPU worker (its models are in RAM already). `ram_total` (and a CPU worker's
    `device_total`) is what the process may use (`usable_memory`: a container's limit, not the node's
    RAM); `gpus` the GPUs it sees (CUDA_VISIBLE_DEVICES applied). Raises ValueError naming the setting."""
    cpu = device_type == "cpu"
    device: int | None
    try:
        if model_memory.strip().lower() == "none":
            device = None
        else:
            auto = "0.5" if cpu else "0.6"
            device = parse_amount(auto if model_memory == "auto" else model_memory, device_total)
    except ValueError as exc:
        raise ValueError(f"PICSERVE_MODEL_MEMORY: {exc}") from None
    try:
        if host_memory == "auto":
            host = 0 if cpu else ram_total // (2 * max(1, gpus))
        else:
            host = parse_amount(host_memory, ram_total)
    except ValueError as exc:
        raise ValueError(f"PICSERVE_MODEL_HOST_MEMORY: {exc}") from None
    return device, host


#: where cgroups are mounted: the cgroup v2 tree, or cgroup v1's controllers (`memory/` among them)
CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")
#: cgroup v1 says "no limit" with the largest page-aligned int64 (9223372036854771712): this much or more is none
_NO_LIMIT = 2**62


def usable_memory(ram_total: int, root: Path = CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> int:
    """The memory this process may really use: the host's `ram_total`, or its cgroup's limit where lower
    (a Kubernetes pod's or a container's memory limit, a systemd unit's MemoryMax=)."""
    limit = cgroup_memory_limit(root, proc_cgroup)
    return ram_total if limit is None else min(ram_total, limit)


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> int | None:
    """The memory limit of this process's cgroup in bytes; None where there is none, or none can be read.

    The lowest of: cgroup v2's `memory.max` ("max": none) and cgroup v1's `memory/memory.limit_in_bytes`
    (a huge value: none), at `root` (where a container sees its own cgroup) and in the process's own
    cgroup below it and each one between (named by `proc_cgroup`, /proc/self/cgroup)."""
    v2, v1 = _own_cgroups(proc_cgroup)
    limits = [*_limits(root, v2, "memory.max"), *_limits(root / "memory", v1, "memory.limit_in_bytes")]
    return min(limits, default=None)


def _own_cgroups(proc_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup v2 path and its cgroup v1 memory controller path ("/" where not listed)."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:  # "0::/system.slice/picserve.service" (v2), "4:memory:/docker/abc" (v1)
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _limits(base: Path, cgroup: str, name: str) -> Iterator[int]:
    """The limits file `name` holds in `cgroup` and each cgroup above it, under `base`; unlimited or
    unreadable ones left out."""
    parts = [part for part in PurePosixPath(cgroup).parts if part not in ("/", ".", "..")]
    for depth in range(len(parts), -1, -1):
        try:
            text = base.joinpath(*parts[:depth], name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            yield int(text)


def shown(amount: float) -> str:
    """Bytes as people read them: 6.9 GiB, 512 MiB."""
    if amount >= 2**30:
        return f"{amount / 2**30:.1f} GiB"
    return f"{amount / 2**20:.0f} MiB"
