"""`moedge serve`: an OpenAI-compatible HTTP server for one bundle (needs the `serve` extra)."""

from .serve import listen, serve

__all__ = ["listen", "serve"]
