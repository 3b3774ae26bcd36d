"""Loading shard sets for training: backends, partition, augmentation."""
