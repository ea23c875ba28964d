"""The management REST API under ``/$mgmt/v1`` (issue 5): handlers, OpenAPI document, audit."""

from __future__ import annotations

from hybridrelay.relay.mgmt.access import Manager, authorize_manage
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.mgmt.handlers import MGMT_PREFIX, add_routes
from hybridrelay.relay.mgmt.openapi import build_openapi

__all__ = ["AUDIT", "MGMT_PREFIX", "Manager", "add_routes", "authorize_manage", "build_openapi"]
