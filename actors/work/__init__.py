"""Calls to the Python API: worker pools, workers, the client, instances, the memory watchdog."""
