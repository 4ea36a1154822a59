"""The composition root: where a worker's parts (inputs, analyzers, sinks, metrics) are put together."""
