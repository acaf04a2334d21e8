-- Model memory in the worker registry (issue 11): main models are kept in two tiers bounded by bytes
-- (engine/loader.py), so a worker reports what is where and how much room its device has. The API
-- reads `memory_total` to refuse at submit a size no live worker could fit (admission.py);
-- `model_slots` is now written after every task (what the byte budget holds), not only at start.
ALTER TABLE picserve_workers
    -- main models kept in CPU RAM, off the device: they come back in a fraction of a disk load
    ADD COLUMN host_models  text[] NOT NULL DEFAULT '{}',
    -- the device's whole memory: the GPU's, or the machine's RAM for a CPU worker (bytes)
    ADD COLUMN memory_total bigint,
    -- bytes of main-model weights it keeps on the device (PICSERVE_MODEL_MEMORY); NULL: unbounded
    ADD COLUMN model_memory bigint,
    -- bytes of the main models on the device, and in RAM, now
    ADD COLUMN model_bytes  bigint NOT NULL DEFAULT 0,
    ADD COLUMN host_bytes   bigint NOT NULL DEFAULT 0;
