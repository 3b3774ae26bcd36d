"""Packing sources of images into shard sets: checks, alignment, detection."""
