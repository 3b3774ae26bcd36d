"""The distributed trainer: plan, step, loop, hooks and the entry point."""

from dist_face.train.entry import main

__all__ = ["main"]
