"""The shared core: messages, the batch loop, the fault model, sinks, S3, PostgreSQL, decoding, analyzers."""
