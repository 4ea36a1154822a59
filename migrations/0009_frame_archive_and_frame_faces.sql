-- Frame archive (VISIONSTREAM_FRAME_ARCHIVE=on): the S3 key of a processed frame's JPEG, so frames are
-- searchable by camera, time and result in SQL and can be replayed (visionstream replay --camera).
-- frames/<camera>/<YYYY-MM-DD>/<seq>.jpg (visionstream/frames/archive.py), or the claim-check key the frame
-- arrived with. NULL: not archived (archive off, skipped, or before this migration).
ALTER TABLE frame_results ADD COLUMN archive_key text;
CREATE INDEX frame_results_archived_idx ON frame_results (camera_id, captured_at) WHERE archive_key IS NOT NULL;

-- Faces per frame and detector version. frame_results stays one row per frame (the live record: latency,
-- skips, coverage); every detector run on a frame, live or replayed, adds its row here, so two versions'
-- counts of one frame sit side by side, like image_faces for S3 images. Frames from before this migration
-- have no row here.
CREATE TABLE frame_faces (
    camera_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    model        text        NOT NULL,  -- name@version, e.g. mtcnn@facenet-pytorch-2.6.0-side960
    captured_at  timestamptz NOT NULL,
    face_count   smallint    NOT NULL CHECK (face_count >= 0),
    faces        jsonb       NOT NULL,  -- as frame_results.faces
    hostname     text        NOT NULL,
    time         timestamptz NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    -- Redelivered or replayed again: INSERT ... ON CONFLICT DO NOTHING on this key adds nothing.
    PRIMARY KEY (camera_id, seq, model)
);
CREATE INDEX frame_faces_model_idx ON frame_faces (model);

-- Versions of one detector name, over frames and S3 images; old = the one whose first result is earlier.
CREATE VIEW detector_version_pairs AS
WITH results AS (SELECT model, time FROM frame_faces UNION ALL SELECT model, time FROM image_faces),
first_seen AS (SELECT model, split_part(model, '@', 1) AS name, min(time) AS first_at FROM results GROUP BY model)
SELECT o.model AS model_old, n.model AS model_new
FROM first_seen o JOIN first_seen n ON o.name = n.name AND (o.first_at, o.model) < (n.first_at, n.model);

-- Frames both versions ran on, with both face counts.
CREATE VIEW frame_face_count_pairs AS
SELECT p.model_old, p.model_new, o.camera_id, o.seq, o.captured_at,
       o.face_count AS faces_old, n.face_count AS faces_new, n.face_count - o.face_count AS change
FROM detector_version_pairs p JOIN frame_faces o ON o.model = p.model_old
JOIN frame_faces n ON n.model = p.model_new AND n.camera_id = o.camera_id AND n.seq = o.seq;

-- Frames whose face count changed between two versions.
CREATE VIEW frame_face_changes AS
SELECT * FROM frame_face_count_pairs WHERE faces_old <> faces_new;

-- Per pair of versions and camera: frames compared, same count, more and fewer faces, faces in total.
CREATE VIEW frame_face_agreement AS
SELECT model_old, model_new, camera_id, count(*) AS frames,
       count(*) FILTER (WHERE change = 0) AS same_count, count(*) FILTER (WHERE change > 0) AS more_faces,
       count(*) FILTER (WHERE change < 0) AS fewer_faces,
       sum(faces_old) AS faces_old, sum(faces_new) AS faces_new
FROM frame_face_count_pairs GROUP BY model_old, model_new, camera_id;

-- S3 images both versions ran on, with both face counts (image_faces, migration 0006).
CREATE VIEW image_face_count_pairs AS
SELECT p.model_old, p.model_new, o.image_key,
       o.face_count AS faces_old, n.face_count AS faces_new, n.face_count - o.face_count AS change
FROM detector_version_pairs p JOIN image_faces o ON o.model = p.model_old
JOIN image_faces n ON n.model = p.model_new AND n.image_key = o.image_key;
