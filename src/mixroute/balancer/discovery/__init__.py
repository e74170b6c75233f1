"""Discovery sources: they find endpoints at run time and hand the full set to the registry.

Only the configuration is imported here. ``mixroute.config.schema`` mounts it, and the
Kubernetes client is heavy and optional, so ``kubernetes.py`` is imported only by whoever
starts a discovery source.
"""

from mixroute.balancer.discovery.config import KubernetesDiscoveryConfig

__all__ = ["KubernetesDiscoveryConfig"]
