"""Caches: in-process first level, Redis second level, invalidated over Redis pub/sub."""
