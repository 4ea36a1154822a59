-- Faces MTCNN found in S3 images (the `faces` analyzer): one row per (image, detector version), idempotent
-- like prediction_results. faces: [{"box": [x1, y1, x2, y2], "probability": p, "landmarks": [[x, y] x5],
-- "person": null, "similarity": null}] in the image's own pixels.
CREATE TABLE image_faces (
    image_key   text        NOT NULL,
    model       text        NOT NULL,
    face_count  smallint    NOT NULL CHECK (face_count >= 0),
    faces       jsonb       NOT NULL,
    hostname    text        NOT NULL,
    time        timestamptz NOT NULL DEFAULT now(),
    topic       text,
    "partition" integer,
    "offset"    bigint,
    PRIMARY KEY (image_key, model)
);
CREATE INDEX image_faces_time_idx ON image_faces (time);
