-- Enrolments are per embedder: an identity is only ever compared with embeddings of the model that made it.
-- Rows from before this migration came from an InceptionResnetV1 file of unknown version: re-enrol them.
ALTER TABLE face_identities ADD COLUMN embedder text NOT NULL DEFAULT 'inception_resnet_v1@unknown';
ALTER TABLE face_identities ALTER COLUMN embedder DROP DEFAULT;
ALTER TABLE face_identities DROP CONSTRAINT face_identities_pkey, ADD PRIMARY KEY (name, embedder);

-- Every detected face's embedding, when VISIONSTREAM_STORE_FACE_EMBEDDINGS allows it (off by default), so
-- people enrolled later can be found in the past (enroll --backfill) without running a model again.
CREATE TABLE face_embeddings (
    source      text        NOT NULL,  -- "<camera>/<seq>" for frames, the S3 key for images
    face_index  smallint    NOT NULL CHECK (face_index >= 0),
    embedder    text        NOT NULL,  -- name@version: never compared across embedders
    camera_id   text,
    captured_at timestamptz NOT NULL,
    image_key   text,                  -- the S3 object holding the pixels, when there is one
    box         real[]      NOT NULL,  -- x1, y1, x2, y2 in original pixels
    embedding   real[]      NOT NULL,  -- unit length
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, face_index, embedder)
);
CREATE INDEX face_embeddings_retention_idx ON face_embeddings (stored_at);

-- Where an enrolled person was found in stored history (enroll --backfill).
CREATE TABLE face_sightings (
    person      text        NOT NULL,
    embedder    text        NOT NULL,
    source      text        NOT NULL,
    face_index  smallint    NOT NULL,
    camera_id   text,
    captured_at timestamptz NOT NULL,
    image_key   text,
    similarity  real        NOT NULL,
    found_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (person, embedder, source, face_index)
);
