-- Live previews: the latest preview image of a running task (a small JPEG data URI), written by its
-- worker with its progress. A task that leaves Running (finished, failed, cancelled, queued again)
-- drops it in the same UPDATE, whatever statement made the change.
ALTER TABLE picserve_tasks ADD COLUMN preview text;

CREATE FUNCTION picserve_drop_preview() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.preview := NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER picserve_drop_preview
    BEFORE UPDATE OF status ON picserve_tasks
    FOR EACH ROW
    WHEN (NEW.status <> 'Running' AND NEW.preview IS NOT NULL)
    EXECUTE FUNCTION picserve_drop_preview();
