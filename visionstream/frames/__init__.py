"""Video frames: frame records, the producer (files, cameras, RTSP), the frames pipeline and sinks."""
