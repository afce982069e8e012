"""One runner per job system for the engine-overhead benchmark (bench/engine_overhead.py).

Every runner does the same thing: reset its broker or database, start one worker process
(a subprocess) that runs a no-op job with at most ``concurrency`` jobs in flight, enqueue
N jobs in bulk (in chunks of ``CHUNK``), and poll its own result store until all N are
observed completed. The clock runs from the first enqueue to that observation.
"""
