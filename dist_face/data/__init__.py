"""Datasets: the record format, packing sources into shard sets, loading them, synthetic faces."""
