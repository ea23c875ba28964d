"""The operator dashboard at ``/$dashboard/``, on an origin of its own (issue 14)."""

from hybridrelay.relay.dashboard.handlers import (
    DASHBOARD_PREFIX,
    dashboard_app,
    dashboard_url,
    install,
)

__all__ = ["DASHBOARD_PREFIX", "dashboard_app", "dashboard_url", "install"]
