"""Command-line entry points (tools/ holds thin wrappers)."""
