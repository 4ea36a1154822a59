-- One row per message that could not be processed (the dead-letter topic carries the same record).
CREATE TABLE processing_errors (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_key  text        NOT NULL,
    stage      text        NOT NULL,
    reason     text        NOT NULL,
    hostname   text        NOT NULL,
    time       timestamptz NOT NULL DEFAULT now(),
    topic      text        NOT NULL,
    "partition" integer    NOT NULL,
    "offset"   bigint      NOT NULL,
    payload    bytea,
    -- A redelivered bad message is recorded once.
    CONSTRAINT processing_errors_message_key UNIQUE (topic, "partition", "offset")
);
CREATE INDEX processing_errors_time_idx ON processing_errors (time);
CREATE INDEX processing_errors_key_idx ON processing_errors (image_key);
