"""Which replica: endpoint registry, health, circuit breakers and selection policies."""
