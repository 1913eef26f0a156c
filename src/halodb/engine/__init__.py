"""The engine: the store directory, recovery, routing, batches, scans and the process hooks,
over the partitions; knows nothing of Python types (see :mod:`halodb.engine.engine`)."""
