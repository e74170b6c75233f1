"""mixroute: one OpenAI-compatible gateway that picks the model and the replica."""

__version__ = "0.1.0"
