"""Verification: pair files, embeddings with flip, 10-fold accuracy, EER and TAR@FAR."""
