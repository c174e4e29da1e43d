"""Thin I/O adapters; each converts its vendor's errors into tokenplane_operator.errors."""
