"""The `visionstream` command: argument parsers and the commands they run."""
