"""Metric sinks: one interface for the console, files, tests and Prometheus."""

from dist_face.metrics.sinks import ConsoleSink, InMemorySink, JsonlSink, MultiSink, Sink

__all__ = ["ConsoleSink", "InMemorySink", "JsonlSink", "MultiSink", "Sink"]
