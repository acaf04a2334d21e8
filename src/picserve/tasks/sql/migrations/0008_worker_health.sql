-- A worker that leaves a broken GPU (issue 29): a sticky CUDA error (an illegal memory access, a
-- device-side assert, an ECC fault) makes every later call on its device fail, so the worker requeues
-- its task, writes why here and exits to be restarted (tasks/jobs.py). `picserve workers` shows it; a
-- restarted worker of the same name writes its row anew, healthy. The fetch keeps no job for it: it
-- writes its row holding nothing.
ALTER TABLE picserve_workers
    -- NULL: healthy; else why the worker stopped taking tasks (the device error, in words)
    ADD COLUMN unhealthy text,
    -- the compute dtype its engine runs the models in ("float16", "bfloat16", "float32"); NULL: not reported
    ADD COLUMN dtype     text;
