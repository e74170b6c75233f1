"""Which model: one embedding per request, signals that share it, and the decision engine."""
