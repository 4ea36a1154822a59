-- One row per camera frame the faces agent handled: its faces, or why it was skipped.
CREATE TABLE frame_results (
    camera_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    captured_at  timestamptz NOT NULL,
    processed_at timestamptz NOT NULL,
    latency_ms   real        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('processed', 'skipped')),
    skip_reason  text,
    width        integer     NOT NULL CHECK (width > 0),
    height       integer     NOT NULL CHECK (height > 0),
    face_count   smallint    NOT NULL CHECK (face_count >= 0),
    -- [{"box": [x1, y1, x2, y2], "probability": p, "landmarks": [[x, y] x5], "person": .., "similarity": ..}]
    faces        jsonb       NOT NULL,
    hostname     text        NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    -- A redelivered frame must not add a row: writes are INSERT ... ON CONFLICT DO NOTHING on this key.
    PRIMARY KEY (camera_id, seq),
    CHECK ((status = 'skipped') = (skip_reason IS NOT NULL))
);
CREATE INDEX frame_results_captured_idx ON frame_results (captured_at);

-- Enrolled people: one L2-normalised mean InceptionResnetV1 embedding each (visionstream enroll).
CREATE TABLE face_identities (
    name        text        PRIMARY KEY,
    embedding   real[]      NOT NULL,
    photos      integer     NOT NULL CHECK (photos > 0),
    enrolled_at timestamptz NOT NULL DEFAULT now()
);
