-- What ran MTCNN's nets for a face row: torch, onnxruntime or openvino (faces/mtcnn_backends.py), beside the
-- detector's model id, which stays the same whichever backend ran it (the backends agree on >= 99.5% of faces,
-- measured before one is allowed), so a message redelivered to a machine that chose another backend writes
-- nothing new (ON CONFLICT) and the version views see one detector, not two. NULL for rows written before
-- this column existed.
ALTER TABLE image_faces ADD COLUMN backend text;
ALTER TABLE frame_faces ADD COLUMN backend text;
