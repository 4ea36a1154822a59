-- When `visionstream retry` sent the message back to the images topic (NULL: never). A retried message
-- that fails again gets a new row (it has a new offset); this one stays as its history.
ALTER TABLE processing_errors ADD COLUMN retried_at timestamptz;
