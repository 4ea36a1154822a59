"""Development only: the one-machine stack, the demo, sample media, the worker launcher for tests."""
