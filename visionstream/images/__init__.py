"""S3 images: the image-request producer, the worker's resources, replay through a new model."""
