"""Turn a YAML file (or ``--backend`` flags) into a validated ``MixrouteConfig``.

Errors are ``ConfigError`` with one line per problem, each naming the field path
(``endpoints[1].url: ...``) so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mixroute.config.schema import MixrouteConfig

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config that cannot be used, with every problem spelled out."""


def load_config_file(path: str | Path, environ: Mapping[str, str] | None = None) -> MixrouteConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8: {exc}") from exc
    return parse_config_text(text, source=str(path), environ=environ)


def parse_config_text(
    text: str, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> MixrouteConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    data = interpolate_env(raw, os.environ if environ is None else environ)
    return validate_config(data, source=source)


def validate_config(data: Mapping[str, Any], *, source: str = "<config>") -> MixrouteConfig:
    try:
        return MixrouteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for error in exc.errors():
        path = _format_location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling and its place in the file)"
        given = error.get("input")
        quiet = error["type"] in ("missing", "value_error") or isinstance(given, dict | list)
        shown = "" if quiet else f" (got {given!r})"
        lines.append(f"  {path}: {message}{shown}" if path else f"  {message}{shown}")
    return "\n".join(lines)


def _format_location(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def interpolate_env(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in string values (never in keys)."""
    if isinstance(value, dict):
        return {
            k: interpolate_env(v, environ, f"{path}.{k}" if path else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _ENV_REFERENCE.sub(substitute, value)
    return value


def config_from_backends(
    backends: Sequence[str], *, default_model: str | None = None
) -> MixrouteConfig:
    """Build a pure-balancer config from ``MODEL=URL`` pairs; a repeated MODEL adds replicas."""
    endpoints: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for backend in backends:
        model, sep, url = backend.partition("=")
        if not sep or not model or not url:
            raise ConfigError(f"--backend {backend!r}: expected MODEL=URL")
        index = counts.get(model, 0)
        counts[model] = index + 1
        endpoints.append({"name": f"{model}-{index}", "url": url, "model": model})
    first_model = endpoints[0]["model"] if endpoints else None
    data: dict[str, Any] = {
        "endpoints": endpoints,
        "routing": {"default_model": default_model or first_model},
    }
    return validate_config(data, source="--backend")
