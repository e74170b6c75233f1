"""Envoy ExtProc mode: mixroute decides, Envoy proxies (docs/envoy.md).

``server`` is the gRPC ext_proc v3 service and its command line, ``processor`` maps Envoy's
messages onto ``pipeline`` (the gateway's own request steps without the proxying),
``envoy_config`` renders a matching Envoy bootstrap and ``demo`` runs the whole topology.
"""
