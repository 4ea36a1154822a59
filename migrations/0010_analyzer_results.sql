-- Outputs of analyzers that are not built in (plug-ins named in VISIONSTREAM_IMAGE_ANALYZERS or
-- VISIONSTREAM_FRAME_ANALYZERS): one JSON value per (image or frame key, model name@version), idempotent
-- like prediction_results. A frame's key is "<camera>/<seq>", its source the frames topic.
CREATE TABLE analyzer_results (
    image_key   text        NOT NULL,
    analyzer    text        NOT NULL,  -- the analyzer's name, as its builder calls it
    model       text        NOT NULL,  -- name@version
    output      jsonb       NOT NULL,
    hostname    text        NOT NULL,
    time        timestamptz NOT NULL DEFAULT now(),
    topic       text,
    "partition" integer,
    "offset"    bigint,
    PRIMARY KEY (image_key, model)
);
CREATE INDEX analyzer_results_time_idx ON analyzer_results (time);

-- A frame worker whose frame analyzers do not include faces looks for none: face_count and faces are NULL.
ALTER TABLE frame_results ALTER COLUMN face_count DROP NOT NULL, ALTER COLUMN faces DROP NOT NULL;
