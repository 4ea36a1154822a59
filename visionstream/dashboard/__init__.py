"""`visionstream dashboard`: one web page with the live video of every camera, its face boxes, and the pipeline's
numbers, served by a process of its own (see server.py) from what the pipeline publishes."""
