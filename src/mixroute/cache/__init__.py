"""The semantic cache: keys, the second check, backends, and replay of stored answers."""
