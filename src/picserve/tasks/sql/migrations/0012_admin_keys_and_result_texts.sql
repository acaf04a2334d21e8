-- Model import over the API (issue 26): an admin key may ask the server to download and file a model
-- (ImportModel); every other key is refused. Existing keys are not admins: `picserve keys update
-- --admin` makes one. A task's texts (TaskDetail.TxtList) are stored beside its result keys: an
-- import's one line of what was filed (and its warnings), later a caption per image.
ALTER TABLE picserve_keys ADD COLUMN admin boolean NOT NULL DEFAULT false;
ALTER TABLE picserve_tasks ADD COLUMN result_texts text[] NOT NULL DEFAULT '{}';
