"""The relay's made-up tracking ids: GUID-shaped (version 4, RFC 4122 variant) and unique."""

from __future__ import annotations

import uuid

from hybridrelay.relay.pending import TrackingIds


def test_tracking_ids_are_version_4_guids_and_unique() -> None:
    source = TrackingIds()
    ids = [source.new() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[::997]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, canonical 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
