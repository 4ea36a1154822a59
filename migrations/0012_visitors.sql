-- Distinct visitors (opt-in, faces/visitors.py): the anonymous embedding of each visit's first embedded face
-- and the random visitor id (uuid4, never derived from the face) it was given. Workers match a new visit
-- against the rows of the same embedder seen within the window (a bounded query on the index below), under
-- one advisory lock, so two workers or a restarted one agree. `visionstream people purge` deletes rows stored
-- longer ago than VISIONSTREAM_FACE_VISITOR_EMBEDDING_RETENTION_HOURS; visits keep their visitor.
CREATE TABLE visitor_embeddings (
    visit_id    text        PRIMARY KEY,
    visitor_id  uuid        NOT NULL,
    camera_id   text        NOT NULL,
    embedder    text        NOT NULL,
    embedding   real[]      NOT NULL,
    seen_at     timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX visitor_embeddings_window_idx ON visitor_embeddings (embedder, seen_at);
CREATE INDEX visitor_embeddings_stored_idx ON visitor_embeddings (stored_at);

ALTER TABLE visits ADD COLUMN visitor uuid;
CREATE INDEX visits_visitor_idx ON visits (visitor) WHERE visitor IS NOT NULL;

-- Distinct visitors per camera per hour: an enrolled person once, an anonymous visitor once (with distinct
-- visitors on), any other visit once.
CREATE OR REPLACE VIEW visitors_per_camera_hour AS
SELECT camera_id, date_trunc('hour', first_seen) AS hour, count(*) AS visits,
       count(DISTINCT coalesce('person:' || person, 'visitor:' || visitor::text, visit_id)) AS visitors,
       sum(frames) AS faces, round(avg(extract(epoch FROM last_seen - first_seen))::numeric, 2) AS mean_seconds
FROM visits GROUP BY camera_id, date_trunc('hour', first_seen);
