"""Lightning callbacks for cross-cutting concerns: each small, rank-zero logging, configured in conf/callbacks/."""

from callbacks.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
