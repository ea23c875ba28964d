"""The operator dashboard, served by the relay at ``/$dashboard/`` (issue 14)."""

from hybridrelay.relay.dashboard.handlers import DASHBOARD_PREFIX, install

__all__ = ["DASHBOARD_PREFIX", "install"]
