"""The Store contract: one suite, run against every implementation (SQLite and real Redis)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from tests.contract.stores import (
    CONFIG_HC,
    CONFIG_HC_RULE,
    ROOT_KEY,
    ROOT_RULE,
    Clock,
    StoreFactory,
    make_config,
)
from tests.harness.timing import seconds

from hybridrelay.config import Secret
from hybridrelay.errors import (
    ConflictError,
    EntityNotFoundError,
    PreconditionFailedError,
    QuotaExceededError,
    ValidationError,
)
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import HybridConnectionConfig, RuleConfig
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.device_query import DeviceQuery
from hybridrelay.relay.store.models import (
    Authentication,
    ChangeEvent,
    Device,
    Grants,
    HybridConnection,
    SymmetricKey,
    X509Thumbprint,
    validate_device_id,
)

KEY_A = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # base64 of 32 bytes
KEY_B = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
THUMB_A = "AB" * 20
THUMB_B = "cd" * 32


# --- hybrid connections -----------------------------------------------------------------


async def test_hybrid_connection_crud(open_store: StoreFactory, clock: Clock) -> None:
    store = await open_store()
    hc, created = await store.put_hybrid_connection(
        HybridConnection(name="Orders/EU", http=True, max_listeners=5, user_metadata="é" * 10)
    )
    assert created
    assert (hc.created_at, hc.updated_at) == (clock.t, clock.t)
    assert hc.etag
    assert not hc.config_owned
    assert hc.rules == ()
    assert await store.get("orders/eu") == hc
    assert await store.resolve("ORDERS/eu/sub/path") == (hc, "/sub/path")
    assert await store.resolve("Orders/EUx") is None

    later = clock.advance(5)
    hc2, created = await store.put_hybrid_connection(
        replace(hc, user_metadata="v2", request_timeout=12.5), if_match=hc.etag
    )
    assert not created
    assert hc2.etag != hc.etag
    assert (hc2.created_at, hc2.updated_at) == (hc.created_at, later)
    assert (hc2.user_metadata, hc2.request_timeout, hc2.http) == ("v2", 12.5, True)
    assert await store.get("Orders/EU") == hc2

    with pytest.raises(PreconditionFailedError):
        await store.put_hybrid_connection(hc, if_match=hc.etag)  # stale
    with pytest.raises(PreconditionFailedError):
        await store.put_hybrid_connection(HybridConnection(name="absent"), if_match="*")
    with pytest.raises(PreconditionFailedError):
        await store.delete_hybrid_connection("orders/eu", if_match=hc.etag)

    deleted = await store.delete_hybrid_connection("orders/eu", if_match=f'W/"{hc2.etag}"')
    assert deleted == hc2
    assert await store.get("orders/eu") is None
    assert await store.resolve("orders/eu/x") is None
    with pytest.raises(EntityNotFoundError):
        await store.delete_hybrid_connection("orders/eu")


@pytest.mark.parametrize(
    ("hc", "field"),
    [
        (HybridConnection(name="meta", user_metadata="x" * 1025), "userMetadata"),
        (HybridConnection(name="meta", user_metadata="é" * 513), "userMetadata"),  # 1026 bytes
        (HybridConnection(name="$hc"), "name"),
        (HybridConnection(name="a//b"), "name"),
        (HybridConnection(name="ok", max_listeners=0), "maxListeners"),
        (HybridConnection(name="ok", request_timeout=0.01), "requestTimeout"),
    ],
)
async def test_hybrid_connection_validation(
    open_store: StoreFactory, hc: HybridConnection, field: str
) -> None:
    store = await open_store()
    with pytest.raises(ValidationError) as caught:
        await store.put_hybrid_connection(hc)
    assert caught.value.field == field
    assert caught.value.http_status == 400


async def test_user_metadata_of_exactly_1_kib_is_accepted(open_store: StoreFactory) -> None:
    store = await open_store()
    hc, _ = await store.put_hybrid_connection(HybridConnection(name="m", user_metadata="x" * 1024))
    assert (await store.get("m")) == hc


async def test_create_is_get_or_create(open_store: StoreFactory) -> None:
    store = await open_store()
    first = await store.create(HybridConnection(name="auto/one", max_listeners=3))
    assert first.etag
    assert first.created_at is not None
    again = await store.create(HybridConnection(name="AUTO/one", max_listeners=9))
    assert again == first
    assert await store.get("auto/one") == first


async def test_hybrid_connection_paging(open_store: StoreFactory) -> None:
    store = await open_store()
    names = [f"HC-{i:02d}" for i in range(25)]
    for name in names:
        await store.put_hybrid_connection(HybridConnection(name=name))
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = await store.list_hybrid_connections(limit=7, continuation=token)
        pages += 1
        seen.extend(hc.name for hc in page.items)
        if page.continuation is None:
            break
        token = page.continuation
    everything = [*names, CONFIG_HC]
    assert sorted(seen) == sorted(everything)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, key=str.lower)  # stable order: the lower-cased name
    assert pages == 4  # 26 entities, 7 per page
    with pytest.raises(ValidationError):
        await store.list_hybrid_connections(continuation="not-a-token")
    for bad in (0, 1001):
        with pytest.raises(ValidationError):
            await store.list_hybrid_connections(limit=bad)


async def test_config_owned_entities_are_protected_and_config_wins_on_restart(
    open_store: StoreFactory,
) -> None:
    store = await open_store()
    cfg = await store.get(CONFIG_HC)
    assert cfg is not None
    assert cfg.config_owned
    assert [(r.name, r.config_owned) for r in cfg.rules] == [(CONFIG_HC_RULE, True)]
    [root] = await store.namespace_rules()
    assert (root.name, root.primary_key, root.config_owned) == (ROOT_RULE, ROOT_KEY, True)

    with pytest.raises(ConflictError):
        await store.delete_hybrid_connection(CONFIG_HC)
    with pytest.raises(ConflictError):
        await store.put_hybrid_connection(HybridConnection(name=CONFIG_HC, user_metadata="x"))
    with pytest.raises(ConflictError):
        await store.delete_rule(None, ROOT_RULE)
    with pytest.raises(ConflictError):
        await store.put_rule(None, ROOT_RULE.lower(), Rights.SEND)
    with pytest.raises(ConflictError):
        await store.regenerate_key(None, ROOT_RULE, "primary")
    with pytest.raises(ConflictError):
        await store.delete_rule(CONFIG_HC, CONFIG_HC_RULE)
    with pytest.raises(ConflictError) as caught:
        await store.delete_hybrid_connection(CONFIG_HC)
    assert caught.value.http_status == 409

    # The API may add rules to a config-owned HC, and its own entities persist.
    api_rule, _ = await store.put_rule(CONFIG_HC, "api-send", Rights.SEND)
    ns_rule, _ = await store.put_rule(None, "api-ns", Rights.LISTEN)
    api_hc, _ = await store.put_hybrid_connection(HybridConnection(name="api/hc"))
    await store.close()

    # Same config again: nothing changes, not even an etag.
    store = await open_store()
    again = await store.get(CONFIG_HC)
    assert again is not None
    assert again.etag == cfg.etag
    assert [r.name for r in again.rules] == ["api-send", CONFIG_HC_RULE]
    await store.close()

    # A changed config wins: new key, HC gone, new HC; API entities are untouched.
    changed = make_config(
        root_key="rotated-root-key-0123456789",
        hybrid_connections=(
            HybridConnectionConfig(
                name="cfg/two",
                max_listeners=2,
                rules=(
                    RuleConfig(name="two", key=Secret("two-key-0123456789ab"), rights=Rights.SEND),
                ),
            ),
        ),
    )
    store = await open_store(changed)
    rules = {r.name: r for r in await store.namespace_rules()}
    assert rules[ROOT_RULE].primary_key == "rotated-root-key-0123456789"
    assert rules["api-ns"] == ns_rule
    assert await store.get(CONFIG_HC) is None
    two = await store.get("cfg/two")
    assert two is not None
    assert two.config_owned
    assert two.max_listeners == 2
    assert [(r.name, r.config_owned) for r in two.rules] == [("two", True)]
    assert await store.get("api/hc") == api_hc
    assert api_rule.name == "api-send"


async def test_config_rule_takes_over_an_api_rule_of_the_same_name(
    open_store: StoreFactory,
) -> None:
    store = await open_store(make_config(hybrid_connections=()))
    await store.put_rule(None, "shared", Rights.LISTEN)
    await store.close()
    config = replace(
        make_config(hybrid_connections=()),
        rules=(
            RuleConfig(name=ROOT_RULE, key=Secret(ROOT_KEY), rights=Rights.MANAGE),
            RuleConfig(name="Shared", key=Secret("shared-key-0123456789"), rights=Rights.SEND),
        ),
    )
    store = await open_store(config)
    rules = {r.name.lower(): r for r in await store.namespace_rules()}
    assert rules["shared"].config_owned
    assert rules["shared"].primary_key == "shared-key-0123456789"


# --- rules ------------------------------------------------------------------------------


async def test_rules_crud_and_regenerate(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.put_hybrid_connection(HybridConnection(name="rules-hc"))

    rule, created = await store.put_rule("rules-hc", "listen", Rights.LISTEN)
    assert created
    assert rule.primary_key
    assert rule.secondary_key
    assert rule.primary_key != rule.secondary_key
    assert rule.rights == Rights.LISTEN
    assert not rule.config_owned
    updated, created = await store.put_rule("RULES-hc", "listen", Rights.LISTEN | Rights.SEND)
    assert not created
    assert (updated.primary_key, updated.secondary_key) == (rule.primary_key, rule.secondary_key)
    assert await store.list_rules("rules-hc") == (updated,)
    hc = await store.get("rules-hc")
    assert hc is not None
    assert hc.rules == (updated,)

    regenerated = await store.regenerate_key("rules-hc", "listen", "primary")
    assert regenerated.primary_key not in (rule.primary_key, rule.secondary_key)
    assert regenerated.secondary_key == rule.secondary_key
    hc = await store.get("rules-hc")
    assert hc is not None
    assert hc.rules == (regenerated,)
    resolved = await store.resolve("rules-hc/x")
    assert resolved is not None
    assert resolved[0].rules == (regenerated,)

    given = "given-secondary-key-0123456789"
    second = await store.regenerate_key("rules-hc", "LISTEN", "secondary", key=given)
    assert (second.primary_key, second.secondary_key) == (regenerated.primary_key, given)
    with pytest.raises(ValidationError):
        await store.regenerate_key("rules-hc", "listen", "secondary", key="short")

    deleted = await store.delete_rule("rules-hc", "Listen")
    assert deleted == second
    assert await store.list_rules("rules-hc") == ()
    with pytest.raises(EntityNotFoundError):
        await store.delete_rule("rules-hc", "listen")
    with pytest.raises(EntityNotFoundError):
        await store.regenerate_key("rules-hc", "listen", "primary")


async def test_rule_errors(open_store: StoreFactory) -> None:
    store = await open_store()
    with pytest.raises(EntityNotFoundError):
        await store.put_rule("missing-hc", "r", Rights.LISTEN)
    with pytest.raises(EntityNotFoundError):
        await store.list_rules("missing-hc")
    with pytest.raises(ValidationError):
        await store.put_rule(None, "bad name", Rights.LISTEN)
    with pytest.raises(ValidationError):
        await store.put_rule(None, "no-rights", Rights(0))


async def test_at_most_12_rules_per_scope(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.put_hybrid_connection(HybridConnection(name="quota"))
    for i in range(12):
        await store.put_rule("quota", f"r{i:02d}", Rights.LISTEN)
    with pytest.raises(QuotaExceededError):
        await store.put_rule("quota", "r12", Rights.LISTEN)
    await store.put_rule("quota", "r00", Rights.SEND)  # changing one is not adding one
    assert len(await store.list_rules("quota")) == 12

    for i in range(11):  # the namespace holds the config's root rule already
        await store.put_rule(None, f"ns{i:02d}", Rights.SEND)
    with pytest.raises(QuotaExceededError):
        await store.put_rule(None, "one-too-many", Rights.SEND)
    names = [r.name for r in await store.namespace_rules()]
    assert names == sorted(names, key=str.lower)
    assert len(names) == 12


async def test_deleting_a_hybrid_connection_deletes_its_rules(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.put_hybrid_connection(HybridConnection(name="gone"))
    await store.put_rule("gone", "r", Rights.LISTEN)
    await store.delete_hybrid_connection("gone")
    await store.put_hybrid_connection(HybridConnection(name="gone"))
    assert await store.list_rules("gone") == ()


# --- devices ----------------------------------------------------------------------------


async def test_device_crud(open_store: StoreFactory, clock: Clock) -> None:
    store = await open_store()
    grants = Grants(listen=("sensors/*",), send=("commands",))
    created = await store.create_device(Device(device_id="dev-1", grants=grants))
    assert len(created.generation_id) == 18
    assert created.generation_id.isdigit()
    assert created.etag
    assert created.status == "enabled"
    assert created.status_update_time == clock.t
    assert created.connection_state == "disconnected"
    assert created.connection_state_updated_time is None
    assert created.last_activity_time is None
    keys = created.authentication.symmetric_key
    assert keys is not None
    assert keys.primary_key != keys.secondary_key
    assert created.grants == grants
    assert await store.get_device("dev-1") == created
    assert await store.get_device("DEV-1") is None  # deviceIds are case-sensitive

    with pytest.raises(ConflictError) as caught:
        await store.create_device(Device(device_id="dev-1"))
    assert caught.value.http_status == 409

    later = clock.advance(3)
    disabled = await store.replace_device(
        replace(
            created, status="disabled", status_reason="stolen", authentication=Authentication()
        ),
        if_match=created.etag,
    )
    assert disabled.etag != created.etag
    assert disabled.generation_id == created.generation_id
    assert (disabled.status, disabled.status_reason) == ("disabled", "stolen")
    assert disabled.status_update_time == later
    assert disabled.authentication.symmetric_key == keys  # no keys given: kept
    assert await store.get_device("dev-1") == disabled

    x509 = await store.replace_device(
        Device(
            device_id="dev-1",
            status="disabled",
            authentication=Authentication(
                type="selfSigned",
                x509_thumbprint=X509Thumbprint(
                    primary_thumbprint=THUMB_A, secondary_thumbprint=THUMB_B
                ),
            ),
        ),
        if_match="*",
    )
    assert x509.status_update_time == later  # status unchanged: its time too
    assert x509.authentication.x509_thumbprint == X509Thumbprint(
        primary_thumbprint=THUMB_A, secondary_thumbprint=THUMB_B.upper()
    )
    assert x509.authentication.symmetric_key is None
    assert await store.get_device("dev-1") == x509

    gone = await store.delete_device("dev-1", if_match=x509.etag)
    assert gone == x509
    assert await store.get_device("dev-1") is None
    with pytest.raises(EntityNotFoundError):
        await store.delete_device("dev-1", if_match="*")
    with pytest.raises(EntityNotFoundError):
        await store.replace_device(Device(device_id="dev-1"), if_match="*")


async def test_device_with_given_keys_and_ca_authentication(open_store: StoreFactory) -> None:
    store = await open_store()
    given = SymmetricKey(primary_key=KEY_A, secondary_key=KEY_B)
    sas = await store.create_device(
        Device(device_id="keyed", authentication=Authentication(symmetric_key=given))
    )
    assert sas.authentication.symmetric_key == given
    ca = await store.create_device(
        Device(device_id="ca", authentication=Authentication(type="certificateAuthority"))
    )
    assert ca.authentication == Authentication(type="certificateAuthority")
    assert await store.get_device("ca") == ca


async def test_etag_changes_on_every_write(open_store: StoreFactory) -> None:
    store = await open_store()
    device = await store.create_device(Device(device_id="etags"))
    etags = [device.etag]
    for i in range(5):
        device = await store.replace_device(
            replace(device, status_reason=f"write {i}"), if_match=device.etag
        )
        etags.append(device.etag)
    assert len(set(etags)) == len(etags)
    with pytest.raises(PreconditionFailedError) as caught:
        await store.replace_device(device, if_match=etags[-2])
    assert caught.value.http_status == 412


async def test_if_match_race_has_exactly_one_winner(open_store: StoreFactory) -> None:
    store = await open_store()
    device = await store.create_device(Device(device_id="race"))
    for round_ in range(10):
        results = await asyncio.gather(
            store.replace_device(replace(device, status_reason=f"a{round_}"), if_match=device.etag),
            store.replace_device(replace(device, status_reason=f"b{round_}"), if_match=device.etag),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Device)]
        losers = [r for r in results if isinstance(r, PreconditionFailedError)]
        assert (len(winners), len(losers)) == (1, 1), results
        assert await store.get_device("race") == winners[0]
        device = winners[0]


async def test_star_forces_concurrent_writes(open_store: StoreFactory) -> None:
    store = await open_store()
    device = await store.create_device(Device(device_id="forced"))
    results = await asyncio.gather(
        *(
            store.replace_device(replace(device, status_reason=f"w{i}"), if_match="*")
            for i in range(5)
        )
    )
    final = await store.get_device("forced")
    assert final is not None
    assert final.etag in {r.etag for r in results}
    assert len({r.etag for r in results}) == 5
    with pytest.raises(PreconditionFailedError):
        await store.delete_device("forced", if_match=device.etag)
    await store.delete_device("forced", if_match="*")


async def test_two_concurrent_deletes_one_wins(open_store: StoreFactory) -> None:
    store = await open_store()
    device = await store.create_device(Device(device_id="twice"))
    results = await asyncio.gather(
        store.delete_device("twice", if_match=device.etag),
        store.delete_device("twice", if_match=device.etag),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Device) for r in results) == 1
    assert sum(isinstance(r, EntityNotFoundError | PreconditionFailedError) for r in results) == 1


async def test_generation_id_differs_on_recreate(open_store: StoreFactory) -> None:
    store = await open_store()
    first = await store.create_device(Device(device_id="phoenix"))
    await store.delete_device("phoenix", if_match="*")
    second = await store.create_device(Device(device_id="phoenix"))
    assert second.generation_id != first.generation_id
    assert second.etag != first.etag


async def test_device_paging_walks_2500_devices_once_each(open_store: StoreFactory) -> None:
    store = await open_store()
    ids = [f"d{i:05d}" for i in range(2500)]
    for start in range(0, len(ids), 250):
        await asyncio.gather(
            *(store.create_device(Device(device_id=i)) for i in ids[start : start + 250])
        )
    seen: list[str] = []
    sizes: list[int] = []
    token: str | None = None
    while True:
        page = await store.list_devices(limit=1000, continuation=token)
        sizes.append(len(page.items))
        seen.extend(d.device_id for d in page.items)
        if page.continuation is None:
            break
        token = page.continuation
    assert sizes == [1000, 1000, 500]
    assert seen == ids  # each once, in byte order
    small = await store.list_devices(limit=3)
    assert [d.device_id for d in small.items] == ids[:3]
    with pytest.raises(ValidationError):
        await store.list_devices(limit=1001)
    with pytest.raises(ValidationError):
        await store.list_devices(continuation="c1.%%%")


async def _search(
    store: Store, query: DeviceQuery, *, limit: int = 1000, scan: int = 10_000
) -> tuple[list[str], list[int]]:
    """Walk every page of a search: the ids found, and each page's size."""
    found: list[str] = []
    sizes: list[int] = []
    token: str | None = None
    while True:
        page = await store.list_devices(
            limit=limit, continuation=token, query=query, scan_limit=scan
        )
        found.extend(d.device_id for d in page.items)
        sizes.append(len(page.items))
        if page.continuation is None:
            return found, sizes
        token = page.continuation


async def test_device_search_by_prefix_substring_status_and_connection(
    open_store: StoreFactory, clock: Clock
) -> None:
    store = await open_store()
    ids = [f"pump-{i:03d}" for i in range(30)] + ["Pumpkin", "valve-007", "pum", "pumq"]
    for device_id in ids:
        await store.create_device(Device(device_id=device_id))
    for device_id in ("pump-003", "valve-007"):
        current = await store.get_device(device_id)
        assert current is not None
        await store.replace_device(replace(current, status="disabled"), if_match="*")
    await store.set_connection_state("pump-007", True, clock.t)
    await store.set_connection_state("Pumpkin", True, clock.t)

    pumps = sorted(i for i in ids if i.startswith("pump-"))
    assert (await _search(store, DeviceQuery(prefix="pump-")))[0] == pumps
    assert (await _search(store, DeviceQuery(prefix="pum")))[0] == sorted(["pum", "pumq", *pumps])
    assert (await _search(store, DeviceQuery(contains="PUMPK")))[0] == ["Pumpkin"]
    assert (await _search(store, DeviceQuery(contains="007")))[0] == ["pump-007", "valve-007"]
    assert (await _search(store, DeviceQuery(status="disabled")))[0] == ["pump-003", "valve-007"]
    connected = DeviceQuery(connection_state="connected")
    assert (await _search(store, connected))[0] == ["Pumpkin", "pump-007"]
    both = DeviceQuery(prefix="pump", connection_state="connected", status="enabled")
    assert (await _search(store, both))[0] == ["pump-007"]
    # Paged: 30 pumps, 7 a page, each once in order.
    found, sizes = await _search(store, DeviceQuery(prefix="pump-"), limit=7)
    assert (found, sizes) == (pumps, [7, 7, 7, 7, 2])
    # A bounded scan: 100 ids looked at per page at most, so a rare match is found on a
    # later page and the pages before it are empty but carry a token.
    for n in range(250):
        await store.create_device(Device(device_id=f"x{n:03d}"))
    found, sizes = await _search(store, DeviceQuery(contains="x249"), scan=100)
    # 284 ids; x249 sorts last: pages of 100, 100 and 84 ids looked at.
    assert (found, sizes) == (["x249"], [0, 0, 1])
    found, _ = await _search(store, DeviceQuery(status="disabled"), limit=1, scan=100)
    assert found == ["pump-003", "valve-007"]


async def test_listing_order_is_byte_order_of_the_device_id(open_store: StoreFactory) -> None:
    store = await open_store()
    ids = ["b", "B", "a", "A", "_", "$", "a-1", "a.1", "z", "Z9"]
    for device_id in ids:
        await store.create_device(Device(device_id=device_id))
    page = await store.list_devices()
    assert [d.device_id for d in page.items] == sorted(ids)
    assert page.continuation is None


VALID_IDS = [
    "a",
    "A" * 128,
    "-.+%_#*?!(),:=@$'",
    "dev:1@site$x",
    "'quoted'",
    "100%",
    "(x),y=z",
    "MiXeD-Case.42",
]


async def test_valid_device_ids_round_trip(open_store: StoreFactory) -> None:
    store = await open_store()
    for device_id in VALID_IDS:
        created = await store.create_device(Device(device_id=device_id))
        assert (await store.get_device(device_id)) == created
    listed = [d.device_id for d in (await store.list_devices()).items]
    assert listed == sorted(VALID_IDS)
    assert await store.get_device("no such/device") is None


@pytest.mark.parametrize("device_id", VALID_IDS)
def test_valid_device_ids(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize(
    ("device_id", "named"),
    [
        ("a" * 129, "at most 128 characters (got 129)"),
        ("a b", "' ' (U+0020) at position 1"),
        ("a/b", "'/' (U+002F) at position 1"),
        ("dévice", "'é' (U+00E9) at position 1"),
        ("", "must not be empty"),
        ("tab\there", "'\\t' (U+0009)"),
        ("{tag}", "'{' (U+007B) at position 0"),
        ("a&b", "'&'"),
        ("semi;colon", "';'"),
        ('dq"', "'\"'"),
        ("back\\slash", "'\\\\'"),
        ("emoji😀", "U+1F600"),
    ],
)
def test_invalid_device_ids_name_the_problem(device_id: str, named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_device_id(device_id)
    assert caught.value.field == "deviceId"
    assert caught.value.http_status == 400
    assert named in str(caught.value)
    with pytest.raises(ValidationError):
        Device(device_id=device_id)
    with pytest.raises(ValidationError):
        Device.from_json({"deviceId": device_id})


async def test_connection_state_and_activity(open_store: StoreFactory, clock: Clock) -> None:
    store = await open_store()
    device = await store.create_device(Device(device_id="live"))
    t1 = clock.t + 10.5
    await store.set_connection_state("live", True, t1)
    got = await store.get_device("live")
    assert got is not None
    assert (got.connection_state, got.connection_state_updated_time) == ("connected", t1)
    assert got.etag == device.etag  # not a write to the identity

    await store.touch_activity("live", t1 + 1)
    await store.touch_activity("live", t1 + 1.5)  # within 1 s of the last: coalesced
    got = await store.get_device("live")
    assert got is not None
    assert got.last_activity_time == t1 + 1
    await store.touch_activity("live", t1 + 3)
    got = await store.get_device("live")
    assert got is not None
    assert got.last_activity_time == t1 + 3

    replaced = await store.replace_device(replace(got, status_reason="x"), if_match=got.etag)
    assert (replaced.connection_state, replaced.last_activity_time) == ("connected", t1 + 3)
    await store.set_connection_state("live", False, t1 + 4)
    [listed] = (await store.list_devices()).items
    assert listed.connection_state == "disconnected"
    assert listed.connection_state_updated_time == t1 + 4
    assert listed.last_activity_time == t1 + 3

    # Unknown devices are ignored, and not created by the way.
    await store.set_connection_state("ghost", True, t1)
    await store.touch_activity("ghost", t1)
    assert await store.get_device("ghost") is None


async def test_activity_survives_a_restart(open_store: StoreFactory, clock: Clock) -> None:
    store = await open_store()
    await store.create_device(Device(device_id="persist"))
    await store.touch_activity("persist", clock.t + 7)
    await store.set_connection_state("persist", True, clock.t + 8)
    await store.close()
    store = await open_store()
    got = await store.get_device("persist")
    assert got is not None
    assert got.last_activity_time == clock.t + 7
    assert got.connection_state_updated_time == clock.t + 8


# --- change events ----------------------------------------------------------------------


async def _next(queue: asyncio.Queue[ChangeEvent]) -> tuple[str, str, str, str | None]:
    async with asyncio.timeout(seconds(1)):
        event = await queue.get()
    return event.kind, event.op, event.name, event.scope


def _listen(store: Store) -> asyncio.Queue[ChangeEvent]:
    queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()
    store.subscribe(queue.put_nowait)
    return queue


async def test_change_events_reach_every_node_within_a_second(open_store: StoreFactory) -> None:
    writer = await open_store()
    nodes = [writer]
    if open_store.kind == "redis":
        nodes.append(await open_store())  # a second relay node on the same Redis
    queues = [_listen(node) for node in nodes]

    await writer.put_hybrid_connection(HybridConnection(name="Ev/HC"))
    await writer.put_rule("ev/hc", "r", Rights.LISTEN)
    await writer.regenerate_key("ev/hc", "r", "secondary")
    await writer.put_rule(None, "ns-r", Rights.SEND)
    device = await writer.create_device(Device(device_id="ev-dev"))
    await writer.replace_device(replace(device, status="disabled"), if_match=device.etag)
    await writer.delete_device("ev-dev", if_match="*")
    await writer.delete_hybrid_connection("ev/hc")
    expected = [
        ("hybridConnection", "created", "Ev/HC", None),
        ("rule", "created", "r", "Ev/HC"),
        ("rule", "updated", "r", "Ev/HC"),
        ("rule", "created", "ns-r", None),
        ("device", "created", "ev-dev", None),
        ("device", "updated", "ev-dev", None),
        ("device", "deleted", "ev-dev", None),
        ("hybridConnection", "deleted", "Ev/HC", None),
    ]
    for queue in queues:
        assert [await _next(queue) for _ in expected] == expected
        assert queue.empty()  # a node does not hear its own change twice


# SQLite serves one process: only Redis has a second node to hear from.
@pytest.mark.parametrize("open_store", ["redis"], indirect=True)
async def test_events_from_the_other_node_and_unsubscribe(open_store: StoreFactory) -> None:
    a = await open_store()
    b = await open_store()
    got_a = _listen(a)
    calls: list[ChangeEvent] = []
    unsubscribe = a.subscribe(calls.append)
    await b.create_device(Device(device_id="from-b"))
    assert await _next(got_a) == ("device", "created", "from-b", None)
    assert await a.get_device("from-b") is not None  # no cache to go stale
    unsubscribe()
    await b.delete_device("from-b", if_match="*")
    assert await _next(got_a) == ("device", "deleted", "from-b", None)
    assert [e.op for e in calls] == ["created"]


async def test_a_failing_subscriber_does_not_stop_the_others(open_store: StoreFactory) -> None:
    store = await open_store()

    def broken(event: ChangeEvent) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    queue = _listen(store)
    await store.create_device(Device(device_id="still-delivered"))
    assert await _next(queue) == ("device", "created", "still-delivered", None)


async def test_hybrid_connection_status_round_trips(open_store: StoreFactory) -> None:
    store = await open_store()
    stored, created = await store.put_hybrid_connection(HybridConnection(name="sw"))
    assert created
    assert stored.status == "enabled"
    disabled, _ = await store.put_hybrid_connection(replace(stored, status="disabled"))
    assert disabled.status == "disabled"
    assert disabled.etag != stored.etag
    got = await store.get("sw")
    assert got is not None
    assert got.status == "disabled"
    assert HybridConnection.from_json(got.to_json()).status == "disabled"


async def test_change_events_say_what_an_update_was(open_store: StoreFactory) -> None:
    """``ChangeEvent.detail`` on the writing node and, through Redis, on another one."""
    writer = await open_store()
    nodes = [writer]
    if open_store.kind == "redis":
        nodes.append(await open_store())
    queues = [_listen(node) for node in nodes]

    hc, _ = await writer.put_hybrid_connection(HybridConnection(name="det"))
    hc, _ = await writer.put_hybrid_connection(replace(hc, status="disabled"))
    hc, _ = await writer.put_hybrid_connection(replace(hc, user_metadata="m"))
    await writer.put_hybrid_connection(replace(hc, status="enabled"))
    await writer.put_rule("det", "r", Rights.LISTEN)
    await writer.regenerate_key("det", "r", "primary")
    device = await writer.create_device(Device(device_id="det-dev"))
    device = await writer.replace_device(replace(device, status="disabled"), if_match="*")
    device = await writer.replace_device(replace(device, status="enabled"), if_match="*")
    keys = Authentication(
        type="sas", symmetric_key=SymmetricKey(primary_key=KEY_A, secondary_key=KEY_B)
    )
    device = await writer.replace_device(replace(device, authentication=keys), if_match="*")
    await writer.replace_device(replace(device, grants=Grants(listen=("det",))), if_match="*")
    expected = [
        ("hybridConnection", "created", None),
        ("hybridConnection", "updated", "disabled"),
        ("hybridConnection", "updated", None),
        ("hybridConnection", "updated", "enabled"),
        ("rule", "created", None),
        ("rule", "updated", "keys"),
        ("device", "created", None),
        ("device", "updated", "disabled"),
        ("device", "updated", "enabled"),
        ("device", "updated", "keys"),
        ("device", "updated", None),
    ]
    for queue in queues:
        got = []
        for _ in expected:
            async with asyncio.timeout(seconds(1)):
                event = await queue.get()
            got.append((event.kind, event.op, event.detail))
        assert got == expected
