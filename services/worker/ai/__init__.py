"""AI jobs on the worker: providers over HTTP, cluster-wide limits, cache and accounting."""
