"""Input and output guards: checks that run on a request before it is routed (PII, jailbreak)."""
