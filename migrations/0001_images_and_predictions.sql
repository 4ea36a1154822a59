-- Images known to visionstream and the classifier's results.
CREATE TABLE image_info (
    image_key      text PRIMARY KEY,
    bucket         text        NOT NULL,
    size_bytes     bigint      CHECK (size_bytes >= 0),
    width          integer     CHECK (width > 0),
    height         integer     CHECK (height > 0),
    format         text,
    label          text,
    split          text,
    source         text,
    content_sha256 text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX image_info_label_idx ON image_info (label);

CREATE TABLE prediction_results (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_key   text        NOT NULL,
    model       text        NOT NULL,
    rank        smallint    NOT NULL CHECK (rank >= 1),
    category    text        NOT NULL,
    class_index integer     NOT NULL,
    confidence  real        NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    hostname    text        NOT NULL,
    time        timestamptz NOT NULL DEFAULT now(),
    -- Where the request came from, for tracing a result back to its message.
    topic       text,
    "partition" integer,
    "offset"    bigint,
    -- A redelivered message must not add rows: writes are INSERT ... ON CONFLICT DO NOTHING on this key.
    CONSTRAINT prediction_results_image_model_rank_key UNIQUE (image_key, model, rank)
);
CREATE INDEX prediction_results_category_idx ON prediction_results (category) WHERE rank = 1;
CREATE INDEX prediction_results_time_idx ON prediction_results (time);
