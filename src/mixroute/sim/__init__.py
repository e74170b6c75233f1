"""A vLLM engine simulator: a fake OpenAI-compatible server with vLLM-like behaviour.

No GPU is needed: latency follows a batch/queue/prefix-cache model (``engine``) and
``/metrics`` exports vLLM's metric names (``metrics``), so a gateway's routing policies
show real differences against it. It shares no code with the gateway on purpose.
"""

from mixroute.sim.server import SimServer, build_app
from mixroute.sim.settings import SimSettings

__all__ = ["SimServer", "SimSettings", "build_app"]
