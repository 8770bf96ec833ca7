"""The auth function: API key -> principal, with its key cache."""
