"""Send a routed request upstream and relay the answer back."""
