"""Configuration: one schema, loaded and validated in one place."""

from mixroute.config.loader import ConfigError, config_from_backends, load_config_file
from mixroute.config.schema import MixrouteConfig

__all__ = ["ConfigError", "MixrouteConfig", "config_from_backends", "load_config_file"]
