"""Typed, strict configs (stdlib dataclasses; no torch import)."""
