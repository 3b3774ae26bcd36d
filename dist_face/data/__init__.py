"""Datasets: RecordIO shards, their manifest, and the sample partition across ranks."""
