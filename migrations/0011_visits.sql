-- Visits (faces/tracking.py): one row per track of a camera's accepted faces. visit_id is
-- "<camera>/<first seq>/<face index>", the same when a frame is redelivered; a frame adds to a visit only when
-- its seq is past the visit's last_seq (a camera's frames are handled in order), so a replayed frame adds
-- nothing. person: the enrolled person a face of the visit matched, if any.
CREATE TABLE visits (
    visit_id          text        PRIMARY KEY,
    camera_id         text        NOT NULL,
    first_seq         bigint      NOT NULL,
    last_seq          bigint      NOT NULL,
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    frames            integer     NOT NULL,
    best_probability  real        NOT NULL,
    person            text
);
CREATE INDEX visits_camera_first_seen_idx ON visits (camera_id, first_seen);
CREATE INDEX visits_person_idx ON visits (person) WHERE person IS NOT NULL;

-- Distinct visitors per camera per hour (by the hour a visit began): an enrolled person counts once an hour,
-- every other visit once (without embeddings a returning stranger is a new visit).
CREATE VIEW visitors_per_camera_hour AS
SELECT camera_id, date_trunc('hour', first_seen) AS hour, count(*) AS visits,
       count(DISTINCT coalesce('person:' || person, visit_id)) AS visitors,
       sum(frames) AS faces, round(avg(extract(epoch FROM last_seen - first_seen))::numeric, 2) AS mean_seconds
FROM visits GROUP BY camera_id, date_trunc('hour', first_seen);
