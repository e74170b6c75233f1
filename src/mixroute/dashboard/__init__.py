"""The web dashboard: a static page at ``/dashboard`` and its JSON APIs.

The page is plain HTML, CSS and JavaScript shipped in ``static/`` (no build step, nothing
fetched from elsewhere). Everything it shows comes from ``/api/v1/dashboard/*``, which the
admin-key middleware guards like the rest of ``/api/``.
"""

from mixroute.dashboard.handlers import add_dashboard_routes

__all__ = ["add_dashboard_routes"]
