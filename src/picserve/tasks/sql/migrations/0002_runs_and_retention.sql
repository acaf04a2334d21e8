-- The run number of a task: incremented each time a worker takes it, so a worker's writes can be
-- fenced to the run it holds. Tasks from before this migration start at 0.
ALTER TABLE picserve_tasks ADD COLUMN attempt integer NOT NULL DEFAULT 0;

-- Serves the count of queued tasks (the queue-full check).
CREATE INDEX picserve_tasks_queued ON picserve_tasks (created_at) WHERE status = 'Queuing';

-- Serves retention: finished tasks by age.
CREATE INDEX picserve_tasks_finished ON picserve_tasks (finished_at) WHERE finished_at IS NOT NULL;
