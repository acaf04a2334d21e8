-- Tasks as a tagged union of action specs (issue 21): a task's spec is one of several kinds (a
-- generation, an upscale, a cut-out, ...), each a versioned JSON form read back by the spec class of
-- its kind (domain.spec_from_json). Every row written before this migration is a generation of the
-- first version, which the defaults say. model_code stays what the fetch routes by: NULL for a kind
-- that needs no main model.
ALTER TABLE picserve_tasks
    ADD COLUMN spec_kind    text    NOT NULL DEFAULT 'generation',
    ADD COLUMN spec_version integer NOT NULL DEFAULT 1;
