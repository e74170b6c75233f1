"""The HTTP surface: OpenAI-compatible API, operations endpoints and admin API."""
