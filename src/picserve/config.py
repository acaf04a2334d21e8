"""Settings: the only place the service reads its environment (`PICSERVE_*`) and merges CLI flags.

(The `picserve generate` client command is not the service: it takes its endpoint and keys from
PICSERVE_URL, PICSERVE_PUBLIC_KEY and PICSERVE_PRIVATE_KEY through its own options.) A `PICSERVE_*`
variable that is neither a setting nor one of those is reported with the closest setting's name, so
a misspelt knob never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Settings", "unknown_variables"]

log = logging.getLogger(__name__)

_PREFIX = "PICSERVE_"
#: variables of the client command and the test suite, not of the service
_NOT_SETTINGS = frozenset({"PICSERVE_URL", "PICSERVE_PUBLIC_KEY", "PICSERVE_PRIVATE_KEY", "PICSERVE_TEST_DATABASE_URL"})


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Each field `x` is read from `PICSERVE_X` unless a flag sets it."""

    #: where the embedded PostgreSQL, results and caches live
    data_dir: Path = Path("data")
    #: main/, lora/, embedding/, hypernetwork/ beneath it
    models_dir: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8080
    #: an external PostgreSQL (postgresql://…); unset = embedded server in data_dir
    database_url: str | None = None
    #: workers that `serve` runs beside the API (0 = API only)
    workers: int = 1
    #: torch device for a worker: "auto" picks cuda when present (`serve` gives worker i cuda:i on a GPU host)
    device: str = "auto"
    #: compute dtype of a worker's models: "auto" (float16 on CUDA, float32 on the CPU), "float16",
    #: "bfloat16" (no fp16 overflow, on GPUs since Ampere) or "float32"
    dtype: str = "auto"
    #: base of the result URLs in ImgList; unset = the base URL each request came in on
    public_url: str | None = None
    #: where results go: "disk" (the data folder, served by the API) or s3://bucket/prefix (presigned URLs)
    storage: str | None = None
    #: the S3 API endpoint for a non-AWS object store (MinIO, Ceph, R2, …); unset = AWS
    s3_endpoint_url: str | None = None
    #: how long result images stay downloadable (PICPIK keeps them 24 h)
    result_ttl_seconds: int = 24 * 3600
    #: seconds an ended task (Finished, Error, Canceled) is kept before it is deleted with its files
    task_retention: float = 30 * 24 * 3600
    #: credits a task costs = ceil(width × height × steps × batch / credit_divisor)
    credit_divisor: int = 1024 * 1024
    #: credits a key gets when created without --credits
    default_credits: int = 1000
    #: live previews of running tasks (TaskDetail.PreviewImage), from the latents without the VAE
    previews: bool = True
    #: minimum seconds between two previews of one task (each written with the task's progress)
    preview_interval: float = 1.0
    #: append a LoRA's TriggerWordList to the prompt when its words are not there yet (off by default:
    #: a LoRA at weight 0 must give the base image, as in A1111; ListModels reports the words for clients)
    append_trigger_words: bool = False
    #: where LANG-en translation models live (default: <models_dir>/translate)
    translation_models: Path | None = None
    #: the Argos package index `picserve models pull-translation` reads
    translation_index_url: str | None = None
    #: main models a worker keeps on its device at once; 0 = as many as PICSERVE_MODEL_MEMORY holds
    max_loaded_models: int = 0
    #: bytes of main-model weights a worker keeps on its device ("12GiB", or a fraction of the device:
    #: "0.6", "60%"); "auto" = 60% of the GPU's memory, or 50% of the RAM on a CPU worker; "none" = unbounded
    model_memory: str = "auto"
    #: bytes of main models a worker keeps in CPU RAM once they left the GPU, to come back in a fraction
    #: of a disk load ("16GiB", or a fraction of the RAM); "auto" = half the RAM shared among the machine's
    #: GPUs, 0 on a CPU worker (its models are in RAM already); "0" = none
    model_host_memory: str = "auto"
    #: main models (comma-separated codes) a worker loads before it takes jobs (`worker --preload`)
    preload: str | None = None
    #: the VAE (a code in <models_dir>/vae) of main models whose sidecar names none; unset = their own
    default_vae: str | None = None
    #: the upscaler (a code in <models_dir>/upscale) of ResizeImage requests that name none, when no
    #: sidecar says `Default: true`; unset = the only one installed, else a plain Lanczos resample
    default_upscaler: str | None = None
    #: the segmentation model (a code in <models_dir>/background) of RemoveBackground requests that name none
    default_background_model: str | None = None
    #: an upscaler's tile side in input pixels; 0 = planned from the device's free memory (512 at most)
    upscale_tile: int = 0
    #: bytes of ControlNets a worker keeps on its device ("5GiB", or a fraction of the device: "0.2");
    #: "auto" = two full SDXL ControlNets in the worker's dtype (5 GiB fp16, 10 GiB fp32); "none" = unbounded
    controlnet_memory: str = "auto"
    #: minimum seconds between two progress writes of one task
    progress_interval: float = 0.5
    #: queued tasks above which new requests get ServerBusy
    max_queued_tasks: int = 1000
    #: worker heartbeat seconds; a worker silent for stalled_after seconds has its task re-run
    heartbeat_interval: float = 5.0
    stalled_after: float = 30.0
    #: a task whose runs were lost (its worker died under it, its device failed, or it hung past its
    #: deadline) more than this many times ends Error 505 instead of running again (2: the third loss ends it)
    max_lost_runs: int = 2
    #: Run deadlines. A run that gives no sign of life (a step, its end) for longer than its limit is
    #: abandoned: its task is queued again under PICSERVE_MAX_LOST_RUNS, or ends, and the worker restarts
    #: if its engine call does not return. The limit is run_deadline_factor × the run's expected seconds
    #: (its work ÷ the speed the worker measured on earlier runs of its kind, or ÷ run_speed before that),
    #: kept between run_deadline_floor and run_deadline_cap seconds; a run_deadline_cap of 0 turns them off
    run_deadline_factor: float = 4.0
    run_deadline_floor: float = 300.0
    run_deadline_cap: float = 3600.0
    #: work per second (pixel·steps for a generation) assumed before a worker has measured its own;
    #: 0 = unknown: the cap until the first run of a kind has finished
    run_speed: float = 0.0
    #: seconds an abandoned run's engine call gets to stop after being told to; else the worker restarts
    run_deadline_grace: float = 10.0
    #: seconds a queued task waits for a live worker that holds its main model before any free worker
    #: takes it (and loads the model); 0 = no model affinity (fair share and queue order only)
    affinity_wait: float = 5.0
    #: seconds a stopping worker lets its running task go on; then it is stopped and queued again
    shutdown_grace: float = 20.0
    #: largest request body accepted (images travel inline as base64)
    max_body_bytes: int = 64 * 1024 * 1024
    #: largest file an ImportModel may download (a full SDXL checkpoint in fp32 is about 14 GB); 0 = no limit
    import_max_bytes: int = 32 * 1024**3
    #: open (queued + running) tasks one key may have; a key's own cap (`keys update`) overrides it; 0 = no cap
    max_open_tasks: int = 100
    #: requests per minute one key may send (every action, over all API nodes); per-key override; 0 = no limit
    max_requests_per_minute: int = 600
    #: seconds a GenerateImagesSDXL request_uuid is remembered: a resend within it gets the same TaskUID
    idempotency_window: float = 24 * 3600
    #: seconds a /v1/images request (the OpenAI-compatible endpoint) waits for its task; then 504, task cancelled
    openai_wait_timeout: float = 300.0
    #: encrypts private keys at rest (Fernet keys, comma-separated, newest first); unset = <data_dir>/secret.key
    secret_key: str | None = None
    log_level: str = "info"
    #: "text" lines, or "json": one JSON object per line with the task, key and model when known (logs.py)
    log_format: Literal["text", "json"] = "text"
    #: a worker serves its Prometheus metrics on this port (`serve` gives worker i this + i); 0 = none
    worker_metrics_port: int = 0

    # Memory and size knobs. Each bounds what one process holds; the defaults suit one SDXL per GPU.
    #: images denoised together; a larger BatchSize runs in chunks of this many (GPU memory ∝ chunk)
    batch_chunk: int = 4
    #: LoRAs kept loaded in each main model (switched with set_adapters); the least recently used goes
    max_loras_per_model: int = 8
    #: sub-model files (LoRA, embedding, hypernetwork state dicts) a worker keeps read in RAM
    max_cached_files: int = 16
    #: seconds between two scans of the models folder (new files appear without a restart)
    catalog_rescan_seconds: float = 2.0
    #: seconds between two sweeps that delete expired result files
    result_cleanup_interval: float = 600.0
    #: database connections of an API process (each request holds one for a statement or two)
    api_db_connections: int = 10
    #: database connections of a worker process (the job, progress writes, heartbeats, the sweeper)
    worker_db_connections: int = 4
    #: seconds a request waits for a database connection; then it is answered 290 (database unreachable)
    db_wait_timeout: float = 3.0

    # Engine speed on CUDA (engine/acceleration.py, docs/performance.md): all off until GPU figures show a win.
    #: UNet and VAE weights in channels_last memory format
    channels_last: bool = False
    #: fused q/k/v attention projections (the UNet unfused while a request's LoRAs are applied)
    fuse_qkv: bool = False
    #: torch.compile of the UNet: off, default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs
    compile: str = "off"
    #: sizes (WIDTHxHEIGHT, comma-separated) that get a compiled UNet graph at worker start; others run eager;
    #: unset = SDXL's nine standard sizes (1024x1024, 1152x896, 896x1152, … 640x1536)
    compile_sizes: str | None = None
    #: with compile: the highest LoRA rank the UNet's hot-swap slots take
    lora_max_rank: int = 64
    #: with compile: LoRAs (with a UNet part) one request may apply, as hot-swap slots; 0 = none
    lora_slots: int = 3

    # Webhooks (webhooks/): each task's events posted, signed, to the URL its request or its key names.
    #: webhook hosts allowed although not public: comma-separated CIDRs and/or host names
    webhook_allow: str | None = None
    #: attempts of a `completed` delivery before it is given up (`start` and `progress`: at most 3)
    webhook_max_attempts: int = 10
    #: seconds before a failed delivery's first retry; each next wait doubles (at most an hour)
    webhook_retry_delay: float = 5.0
    #: seconds a webhook receiver has to accept the connection and to answer
    webhook_timeout: float = 5.0
    #: minimum seconds between two `progress` events of one task
    webhook_progress_interval: float = 5.0
    #: deliveries an API process makes at once
    webhook_concurrency: int = 4

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults < `PICSERVE_*` environment < explicit overrides (None means "not given")."""
        env = os.environ if env is None else env
        for message in unknown_variables(env):
            log.warning("%s", message)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw not in (None, ""):
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("data_dir", "models_dir", "translation_models"):
            if name in values:
                values[name] = Path(values[name])
        return cls(**values)

    def evolve(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as `PICSERVE_*` variables, for child processes."""
        return {
            _PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    @property
    def translation_dir(self) -> Path:
        return self.translation_models or self.models_dir / "translate"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def pg_dir(self) -> Path:
        return self.data_dir / "pg"


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A message for each `PICSERVE_*` variable in `env` that no setting reads, naming the closest one."""
    known = [f.name.upper() for f in dataclasses.fields(Settings)]
    messages = []
    for name in sorted(env):
        suffix = name.removeprefix(_PREFIX)
        if name.startswith(_PREFIX) and suffix not in known and name not in _NOT_SETTINGS:
            close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
            hint = f"; did you mean {_PREFIX}{close[0]}?" if close else " (see docs/settings.md)"
            messages.append(f"{name} is not a picserve setting and is ignored{hint}")
    return messages


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("bool"):
        return raw.lower() in ("1", "true", "yes", "on")
    return raw
