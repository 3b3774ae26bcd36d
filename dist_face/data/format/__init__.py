"""The record format: RecordIO framing, shard sets, InsightFace .rec files."""
