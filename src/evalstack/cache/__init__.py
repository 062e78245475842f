"""Reuse: the content-addressed shard store, the incremental derived-layer engine, executors, what DVC records."""
