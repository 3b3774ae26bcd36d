"""Synthetic face-like identities: the embedded dataset and IJB sets."""
