"""OpenAI-compatible upstream providers."""
