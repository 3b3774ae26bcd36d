"""Auxiliary losses on the global batch: center, pair and metric losses."""
