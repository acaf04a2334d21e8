"""The worker wing: what a worker process does, in one place.

- `process.py`: the worker process: its engine and device, its App on the resilient connector, the
  procrastinate loop restarted after errors (`run_worker`, `work`).
- `jobs.py`: the run protocol: one job = one run of one task, dispatched by the task's kind to an
  engine pipeline (engine/pipelines.py), ending in exactly one outcome.
- `engine_thread.py`: the one thread that makes every torch call.
- `deadline.py`: how long a run may give no sign of life, scaled by its work at the worker's speed.
- `registry.py`: the worker's own row in `picserve_workers` (what the rest reads of it: tasks/workers.py).
- `routing.py` and `connector.py`: the fetch override: which queued task a free worker takes.

Durable task state (the repositories, migrations, recovery, retention) is tasks/'s; the worker
imports it, never the other way round.
"""
