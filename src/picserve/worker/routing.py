"""Which queued task a free worker takes: key priority, fair share between keys, then model affinity.

Loading an SDXL checkpoint costs seconds (switching LoRAs less), so the biggest throughput lever of a
fleet is sending each task to a worker that already holds its model; and a key that floods the queue
must not starve the others. Both are decided in ONE place: the statement a free worker fetches its
next job with. picserve replaces procrastinate's fetch (`procrastinate_fetch_job_v2`) for generation
workers by its own, `picserve_fetch_job_v1` (migration 0004), which `connector.ResilientConnector`
sends instead of procrastinate's `fetch_job` query. It keeps procrastinate's contract exactly — jobs
in `todo`, of the worker's queues, due, first of their lock, taken `FOR UPDATE SKIP LOCKED` and set
`doing` under the worker's id by the same UPDATE — so procrastinate's triggers, its worker, its
heartbeats and the stalled-worker recovery work as with its own fetch, and no job is taken twice. It
only chooses differently, from columns picserve keeps beside the job: the task's key, main model and
LoRAs (copied onto `picserve_tasks` at create_task), the keys' `priority` and `weight`, and what each
worker holds (`picserve_workers`, kept by registry.py).

**The order.** A fetch walks the keys that have queued tasks:

1. *Priority, strictly*: keys of a higher `priority` first (of the jobs this worker may take, see 5).
2. *Fair share*: among keys of equal priority, the fewest running tasks ÷ `weight` first. Keys tied
   there ("equally served") form a tier, ordered least recently served first (round robin, which is
   what one worker alone gets: at each of its fetches no task runs).
3. *Affinity within the tier*: a job for a model this worker holds (among a key's next 100 such jobs,
   one whose LoRAs it holds too) before any other job of the tier; then the tier's other jobs, oldest
   first, that this worker may take. A job whose model another live worker holds is left to that
   worker for `affinity_wait` seconds after it was queued; one whose model no live worker holds is
   taken at once (nobody would be quicker to run it).
4. A key that affinity has kept waiting `affinity_wait` seconds since it was last served (or since its
   oldest task was queued) is *starving*: its jobs come first within its tier.
5. A worker that may take nothing of a tier (its jobs all wait for their holders) looks at the next
   tier, then the next priority: no worker idles while there is a job it may take (work-conserving:
   a higher-priority job waiting for its model's holder does not keep this worker idle).

The trade-off: fairness must not thrash models and affinity must not starve a key. Fair share decides
*which keys* may be served (a key with fewer running tasks per weight always goes first, on any
worker); affinity only chooses *among* equally served keys and among a key's own jobs, and it may hold
a key back for `affinity_wait` seconds at most before the key is starving and served whatever the
worker holds. So one worker serving two keys of different models switches models about once per
`affinity_wait` (a time slice), not at every task; several workers settle on one model each, their
keys' running counts keeping the shares even. No task waits forever: a job held back for its model's
holder is free for anyone after `affinity_wait`, a starving key is served first, and a fetch that finds
nothing in one tier goes on to the next. `affinity_wait = 0` turns affinity off: no reservations, no
preference, fair share and queue order only (what a burst worker uses: it must drain the queue).

Holdings come from the registry: a worker writes the models and LoRAs its engine holds after every
task, and the fetch itself records the model of the task it takes (the one it is loading, evicting
the oldest beyond its `PICSERVE_MAX_LOADED_MODELS`), so that two workers starting together spread over
two models instead of both loading the first. Live = a registry heartbeat within `stalled_after`.
Fetches are not serialised: two that run at the same instant may decide on the same holdings (both
load one model), which the next fetch corrects; SKIP LOCKED still keeps them off each other's job.

**Why not per-model queues.** The alternative (queue.md) puts each task on a queue per model, workers
listen on the queues of the models they hold, and a sweeper moves jobs waiting too long to a shared
queue. It keeps procrastinate's fetch, but: holdings change with every load, so a worker's queue list
would have to change under a running procrastinate Worker (it is fixed at construction); the wait is
enforced only as often as the sweeper runs; moving a job is a second write per task; and fairness
between keys cannot be expressed in queues at all (procrastinate orders by job priority then id, so
per-key order would need a priority rewritten on every queued job of a key each time its share
changes). One fetch statement that reads the registry decides all three at the moment a worker is
free, with nothing to sweep.

**Cost.** The fetch probes indexes only: one loose index scan for the keys with queued tasks (one probe
per key), each key's oldest task, the running jobs (few: one per busy worker), then, key by key, one
index probe per held model and one for any job: at most keys × (held models + 1) probes, whatever the
queue's length. A job without a lock skips procrastinate's lock subquery (written as procrastinate
writes it, the planner hashed all 10,000 jobs for it: 5 ms). Measured with 10,000 queued jobs
(`EXPLAIN ANALYZE` of the call, auto_explain for the statements inside; median of 20 fetches, each
rolled back; this 2-core machine, shared with other test runs; PostgreSQL 15 and 18 alike):

- 3 keys, 4 models, the worker holding one of them: 1.1 ms (affinity off: 0.6 ms;
  procrastinate_fetch_job_v2 on the same queue: 0.35 ms);
- 100 keys: 2.2 ms (affinity off: 1.5 ms);
- the worst case: all 10,000 queued within the last `affinity_wait` seconds for models that other
  live workers hold, so that this worker may take none of them: 13 ms (each is looked at and skipped).

At ~1,000 GPUs finishing one image every 1–2 s (anchors: ~700 claims/s at peak) that is under one
core of PostgreSQL at the median; fetches are not serialised, so they spread over its cores.

The in-memory queue (InMemoryConnector, for tests) keeps procrastinate's own fetch: routing needs the
database's view of every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

__all__ = ["FETCH_JOB", "Routing", "poll_interval"]

#: picserve's fetch: procrastinate's `fetch_job` columns, from picserve_fetch_job_v1 (migration 0004)
FETCH_JOB: LiteralString = (
    "SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts, "
    "worker_id FROM picserve_fetch_job_v1(%(queues)s::varchar[], %(worker_id)s, %(worker)s, "
    "%(affinity_wait)s, %(live_after)s)"
)


@dataclass(frozen=True)
class Routing:
    """How one worker fetches: under its registry name, with the fleet's affinity wait."""

    #: the worker's name in picserve_workers
    worker: str
    #: seconds a job waits for a live worker holding its model (PICSERVE_AFFINITY_WAIT); 0 = affinity off
    affinity_wait: float
    #: a worker whose registry heartbeat is older than this many seconds is not live (stalled_after)
    live_after: float

    def arguments(self) -> dict[str, Any]:
        """The parameters `FETCH_JOB` adds to procrastinate's (queues, worker_id)."""
        return {"worker": self.worker, "affinity_wait": self.affinity_wait, "live_after": self.live_after}


def poll_interval(affinity_wait: float) -> float:
    """Seconds between a free worker's fetches while it finds nothing. A job becomes free for any
    worker when its `affinity_wait` ends, which sends no notification: a worker polls often enough
    to see it within a fifth of the wait (0.2 s to 5 s; procrastinate's 5 s without affinity)."""
    if affinity_wait <= 0:
        return 5.0
    return min(5.0, max(0.2, affinity_wait / 5))
