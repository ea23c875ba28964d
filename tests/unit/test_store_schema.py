"""The schema declarations themselves: one field list gives the codec and the document."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hybridrelay.errors import ValidationError
from hybridrelay.relay.store.schema import (
    BOOLEAN,
    INTEGER,
    STRING,
    TIME,
    Field,
    Schema,
    array_of,
    enum_codec,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thing:
    name: str
    size: int = 3
    colour: str = "red"
    secret: str | None = None
    born: float | None = None
    owned: bool = False


def _no_spaces(where: str, value: str) -> None:
    if " " in value:
        raise ValidationError(where, "no spaces")


THING = Schema(
    "Thing",
    where="thing",
    fields=(
        Field("name", "name", STRING, settable=False, always=True, check=_no_spaces),
        Field("size", "size", INTEGER, default=3, minimum=1, maximum=9, unit="cm"),
        Field(
            "colour",
            "colour",
            enum_codec(("red", "blue"), "red or blue", strings_first=True),
            default="red",
            documented_default=True,
        ),
        Field("key", "secret", STRING, nullable=True, default=None, secret=True),
        Field("bornAt", "born", TIME, default=None, settable=False),
        Field("count", None, INTEGER, settable=False, always=True, minimum=0),
        Field("owned", "owned", BOOLEAN, default=False, null_is_default=True),
    ),
    input_name="ThingInput",
    input_description="What a client sends.",
)


def test_encode_follows_the_declaration_and_leaves_secrets_out_when_asked() -> None:
    thing = Thing(name="a", size=4, secret="k", born=0.0)
    assert THING.encode(thing) == {
        "name": "a",
        "size": 4,
        "colour": "red",
        "key": "k",
        "bornAt": "1970-01-01T00:00:00.000000Z",
        "owned": False,
    }
    assert "key" not in THING.encode(thing, secrets=False)
    assert Thing(**THING.decode(THING.encode(thing))) == thing


def test_decode_fills_defaults_and_takes_given_values_over_the_document() -> None:
    assert THING.decode({"name": "a", "owned": None}) == {
        "name": "a",
        "size": 3,
        "colour": "red",
        "secret": None,
        "born": None,
        "owned": False,
    }
    assert THING.decode({"name": 5}, name="from-url")["name"] == "from-url"


@pytest.mark.parametrize(
    ("doc", "given", "field", "reason"),
    [
        ("x", {}, "thing", "must be a JSON object"),
        ({}, {}, "name", "must be a string"),
        ({"name": "a b"}, {}, "name", "no spaces"),
        ({}, {"name": "a b"}, "name", "no spaces"),  # a given value is checked too
        ({"name": "a", "size": 10}, {}, "size", "must be between 1 and 9 cm"),
        ({"name": "a", "size": None}, {}, "size", "must be an integer"),
        ({"name": "a", "colour": 1}, {}, "colour", "must be a string"),
        ({"name": "a", "colour": "green"}, {}, "colour", "red or blue"),
        ({"name": "a", "key": 1}, {}, "key", "must be a string"),
        ({"name": "a b", "size": 10}, {}, "name", "no spaces"),  # the first field named
    ],
)
def test_decode_names_the_first_bad_field(
    doc: object, given: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        THING.decode(doc, **given)
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_check_applies_the_rules_to_a_record_built_in_code() -> None:
    THING.check(Thing(name="a"))
    with pytest.raises(ValidationError, match="size: must be between 1 and 9 cm"):
        THING.check(Thing(name="a", size=0))


def test_components_give_the_output_and_the_input_schema() -> None:
    assert THING.components() == {
        "Thing": {
            "type": "object",
            "required": ["name", "count"],
            "properties": {
                "name": {"type": "string"},
                "size": {"type": "integer", "minimum": 1, "maximum": 9},
                "colour": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "key": {"type": ["string", "null"]},
                "bornAt": {
                    "type": "string",
                    "description": "ISO 8601 UTC; 0001-01-01T00:00:00Z means never.",
                },
                "count": {"type": "integer", "minimum": 0},
                "owned": {"type": "boolean"},
            },
        },
        "ThingInput": {
            "type": "object",
            "description": "What a client sends.",
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 9},
                "colour": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "key": {"type": ["string", "null"]},
                "owned": {"type": "boolean"},
            },
        },
    }
    assert THING.settable() == ("size", "colour", "key", "owned")
    assert THING.field("count").attr is None
    with pytest.raises(KeyError):
        THING.field("nope")


def test_a_nullable_field_with_an_encoder_writes_null_as_null() -> None:
    when = Schema("When", where="when", fields=(Field("at", "born", TIME, nullable=True),))
    assert when.encode(Thing(name="a")) == {"at": None}
    assert when.encode(Thing(name="a", born=0.0)) == {"at": "1970-01-01T00:00:00.000000Z"}


@pytest.mark.parametrize("attr", ["a b", "a.", "a.1b", "a;b", "-1", "a()"])
def test_an_attribute_must_be_an_identifier_a_path_or_an_index(attr: str) -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        Schema("Bad", where="bad", fields=(Field("x", attr, STRING),))


@dataclass(frozen=True, slots=True)
class Held:
    pairs: tuple[tuple[str, int], ...]
    thing: Thing
    kind: str


PAIR = Schema(
    "Pair",
    where="pair",
    fields=(
        Field("name", "0", STRING, always=True),
        Field("count", "1", INTEGER, always=True, minimum=1),
    ),
)
VIEW = Schema(
    "View",
    where="view",
    description="A read-only view.",
    fields=(
        Field("kind", "kind", STRING, always=True),
        Field("thingName", "thing.name", STRING, always=True),
        Field("pairs", "pairs", array_of(PAIR), description="Name and count."),
        Field("size", "thing.size", INTEGER, when=lambda v: v.kind == "big"),
        Field("colour", "thing.colour", STRING, when=lambda v: v.kind == "big"),
        Field("bornAt", "thing.born", TIME, nullable=True),
    ),
)


def test_a_view_reads_paths_and_indices_and_writes_its_conditional_fields_in_order() -> None:
    thing = Thing(name="a", size=4, born=None)
    small = VIEW.encode(Held(pairs=(("x", 2),), thing=thing, kind="small"))
    assert small == {
        "kind": "small",
        "thingName": "a",
        "pairs": [{"name": "x", "count": 2}],
        "bornAt": None,
    }
    big = VIEW.encode(Held(pairs=(), thing=thing, kind="big"))
    assert list(big) == ["kind", "thingName", "pairs", "size", "colour", "bornAt"]
    assert (big["size"], big["colour"]) == (4, "red")


def test_a_view_documents_its_nested_objects_inline_and_is_never_decoded() -> None:
    assert VIEW.components() == {"View": VIEW.document()}
    pairs = VIEW.document()["properties"]["pairs"]  # type: ignore[index]
    assert pairs == {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "count"],
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer", "minimum": 1},
            },
        },
        "description": "Name and count.",
    }
    with pytest.raises(TypeError, match="read-only view"):
        VIEW.decode({})
    with pytest.raises(TypeError, match="read-only view"):
        VIEW.check(Held(pairs=(), thing=Thing(name="a"), kind="small"))
