-- What ran MTCNN's nets for a face row: torch, onnxruntime or openvino (faces/mtcnn_backends.py), beside the
-- detector's model id, which stays the same whichever backend ran it (the backends agree on >= 99.5% of faces,
-- measured before one is allowed), so a message redelivered to a machine that chose another backend writes
-- nothing new (ON CONFLICT) and the version views see one detector, not two. NULL for rows written before
-- this column existed.
-- The ALTERs take ACCESS EXCLUSIVE locks on two live tables (frame_faces: every frame's insert). Without a
-- limit they would queue behind a long reader (a report's aggregate) while every worker's insert queues behind
-- them. The runner applies a file in one transaction (core/db.py), which scopes SET LOCAL; past 5 s the
-- migration fails and is rolled back, as does the start that ran it (`visionstream migrate`: the setup job
-- retries, OnFailure; a worker: its restart), and the next try runs it again. IF NOT EXISTS: an operator may
-- have added the columns by hand.
SET LOCAL lock_timeout = '5s';
ALTER TABLE image_faces ADD COLUMN IF NOT EXISTS backend text;
ALTER TABLE frame_faces ADD COLUMN IF NOT EXISTS backend text;
