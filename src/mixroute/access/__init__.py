"""Access control: API keys, tenants, rate limits and per-model admission (docs/config.md)."""
