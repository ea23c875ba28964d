"""One declaration per stored resource: its JSON fields, their codecs and their OpenAPI schemas.

A :class:`Schema` names each field of a record once: the JSON name, the attribute, the
:class:`Codec` (the JSON type, how a value is read and written), whether it may be null,
its default when absent, its bounds and its description. From that one list come

- the record's JSON codec (``Schema.encode`` for ``to_json``, ``Schema.decode`` and
  ``Schema.check`` for ``from_json``), with the field name in every refusal, and
- the management API's OpenAPI components for the resource and its input
  (``Schema.components``, used by ``relay/mgmt/openapi.py``),

so the document cannot promise a type, bound or default the decoder does not keep
(issue 13, step 4). ``decode`` checks each field's type and then its value before it
reads the next field, so a refusal names the first bad field in document order;
``check`` applies the same value rules to a record built in code (the config file's
hybrid connections).

The management API's read-only views (``relay/mgmt/views.py``) are declared the same
way, encode-only: a field may read a dotted path or a tuple index (``sender.bytes_in``,
``0``) and be written only when a predicate holds (``when``), and :func:`array_of`
nests a schema's objects in a field.

The primitive decoders (``decode_object``, ``decode_str``, ...) and the time format
(``format_time``/``parse_time``) live here too; the records' modules use them for what
the declarations do not cover (a device's nested authentication).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, NoReturn, TypeVar, cast

from hybridrelay.errors import ValidationError

__all__ = [
    "BOOLEAN",
    "DATE_TIME",
    "INTEGER",
    "NUMBER",
    "REQUIRED",
    "STRING",
    "TIME",
    "Codec",
    "Doc",
    "Field",
    "Schema",
    "array_of",
    "decode_bool",
    "decode_int",
    "decode_number",
    "decode_object",
    "decode_optional_str",
    "decode_str",
    "decode_str_tuple",
    "encode_only",
    "enum_codec",
    "format_time",
    "parse_time",
    "ref",
    "required_time",
]

T = TypeVar("T")
Doc = dict[str, object]

_NEVER: Final = "0001-01-01T00:00:00Z"
_REF: Final = "#/components/schemas/"


class _Required:
    """The default of a field a document must carry (its codec refuses the absent value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


# --- primitive decoders (the decode boundary: values are checked as they are read) ------


def decode_object(where: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValidationError(where, "must be a JSON object")
    return value  # read with str keys only, so a JSON object needs no copy


def decode_str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(where, "must be a string")
    return value


def decode_optional_str(where: str, value: object) -> str | None:
    return None if value is None else decode_str(where, value)


def decode_bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(where, "must be true or false")
    return value


def decode_int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, "must be an integer")
    return value


def decode_number(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, "must be a number")
    return float(value)


def decode_str_tuple(where: str, value: object) -> tuple[str, ...]:
    """A list of strings; null is the empty tuple."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of strings")
    return tuple(decode_str(f"{where}[{i}]", v) for i, v in enumerate(value))


def format_time(t: float | None) -> str:
    """Unix seconds as IoT Hub's ISO 8601 UTC text; None is ``0001-01-01T00:00:00Z``."""
    if t is None:
        return _NEVER
    text = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def parse_time(where: str, value: object) -> float | None:
    """Parse :func:`format_time` text (or null) back; year 1 means never."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(where, "must be an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(where, "must be an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise ValidationError(where, "must carry a time zone (Z)")
    if parsed.year == 1:
        return None
    return parsed.timestamp()


def _parse_required_time(where: str, value: object) -> float:
    parsed = parse_time(where, value)
    if parsed is None:
        raise ValidationError(where, "required")
    return parsed


# --- codecs -----------------------------------------------------------------------------


def _same(value: object) -> object:
    return value


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How one JSON value maps to a Python value, and what the OpenAPI document calls it.

    ``decode(where, value)`` raises ValidationError naming ``where``; ``openapi`` is the
    JSON Schema of a non-null value (a nullable field adds ``"null"`` to its type).
    """

    decode: Callable[[str, object], T]
    encode: Callable[[T], object]
    openapi: Doc


STRING: Final[Codec[str]] = Codec(decode_str, _same, {"type": "string"})
BOOLEAN: Final[Codec[bool]] = Codec(decode_bool, _same, {"type": "boolean"})
INTEGER: Final[Codec[int]] = Codec(decode_int, _same, {"type": "integer"})
NUMBER: Final[Codec[float]] = Codec(decode_number, _same, {"type": "number"})
_TIME_DOC: Final[Doc] = {
    "type": "string",
    "description": "ISO 8601 UTC; 0001-01-01T00:00:00Z means never.",
}
# A time that may be "never": None is written as year 1 and read back as None.
TIME: Final[Codec[float | None]] = Codec(parse_time, format_time, _TIME_DOC)


# The same text documented as a date-time (a time that is there when written at all).
DATE_TIME: Final[Codec[float | None]] = Codec(
    parse_time, format_time, {"type": "string", "format": "date-time"}
)


def required_time() -> Codec[float]:
    """A time that must be given (absent, null and year 1 are refused)."""
    return Codec(_parse_required_time, format_time, _TIME_DOC)


def encode_only(where: str, value: object) -> NoReturn:
    """The decoder of a codec that only writes (a read-only view's): never called."""
    raise TypeError(f"{where}: a read-only view's field is not decoded")


def enum_codec(values: tuple[str, ...], refusal: str, *, strings_first: bool = False) -> Codec[str]:
    """One of ``values`` (case-sensitive); anything else is refused with ``refusal``.

    With ``strings_first`` a value that is not a string is refused as such ("must be a
    string"), as the device documents always have been.
    """
    allowed = frozenset(values)

    def decode(where: str, value: object) -> str:
        if strings_first:
            decode_str(where, value)
        if not isinstance(value, str) or value not in allowed:
            raise ValidationError(where, refusal)
        return value

    return Codec(decode, _same, {"type": "string", "enum": list(values)})


def array_of(item: Schema) -> Codec[Iterable[object]]:
    """A list of ``item`` objects, written with its encoder and documented inline."""
    write = item.encode
    return Codec(
        encode_only,
        lambda records: [write(r) for r in records],
        {"type": "array", "items": item.document()},
    )


# --- fields and schemas -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One JSON field of a resource.

    Attributes:
        name: The JSON name (camelCase, as Azure and IoT Hub spell it).
        attr: The record's attribute; None for a field the API adds to the document
            (e.g. a hybrid connection's live ``listenerCount``), described but not coded.
            A read-only view's field may read a dotted path (``sender.bytes_in``) or, for
            a tuple record, an index (``0``); its schema is then encode-only.
        codec: The value's JSON type and its decoder/encoder.
        nullable: null is a value (None); the document's type says ``[type, "null"]``.
        default: The value when the field is absent; :data:`REQUIRED` when it must be there.
        null_is_default: null means "absent" (the default) rather than a refusal.
        settable: A client sets it (it is in the input schema); False for what the server
            sets or the URL names.
        always: Every output document carries it (the output schema's ``required``).
        secret: A key: left out of documents written without keys (lists, events).
        minimum, maximum: Inclusive bounds, documented; checked when both are given (a
            lone minimum describes what the server writes, e.g. a count).
        unit: Said after the bounds in the refusal ("seconds").
        check: More rules for a value (``where, value`` -> raise ValidationError).
        documented_default: Say ``default`` in the document (not for defaults that are
            the relay's configuration).
        input_required: The input schema requires it; None: when ``default`` is
            :data:`REQUIRED` (False for a field the URL may give instead).
        description: The document's description of the field.
        openapi: More JSON Schema keywords for the document only.
        input_openapi: More JSON Schema keywords for the input schema only (a rule or a
            description that concerns a writer).
        when: Write the field only when this holds for the record (a view's fields that
            concern some records only, e.g. an import job's counts); encode-only.
    """

    name: str
    attr: str | None
    codec: Codec[Any]
    _: KW_ONLY
    nullable: bool = False
    default: object = REQUIRED
    null_is_default: bool = False
    settable: bool = True
    always: bool = False
    secret: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    unit: str = ""
    check: Callable[[str, Any], None] | None = None
    documented_default: bool = False
    input_required: bool | None = None
    description: str | None = None
    openapi: Doc = field(default_factory=dict)
    input_openapi: Doc = field(default_factory=dict)
    when: Callable[[Any], bool] | None = None

    @property
    def checked(self) -> bool:
        """Whether the value has rules beyond its type (bounds or ``check``)."""
        return self.check is not None or (self.minimum is not None and self.maximum is not None)

    def check_value(self, value: object, where: str | None = None) -> None:
        """Raise ValidationError (naming ``where``, else the field) unless the value keeps
        the rules."""
        where = self.name if where is None else where
        if value is None and self.nullable:
            return
        if (
            self.minimum is not None
            and self.maximum is not None
            and not (isinstance(value, int | float) and self.minimum <= value <= self.maximum)
        ):
            unit = f" {self.unit}" if self.unit else ""
            raise ValidationError(where, f"must be between {self.minimum} and {self.maximum}{unit}")
        if self.check is not None:
            self.check(where, value)

    def document(self, *, input_: bool = False) -> Doc:
        """The field's JSON Schema in the OpenAPI document (of the input schema)."""
        doc: Doc = dict(self.codec.openapi)
        if self.nullable:
            doc["type"] = [doc["type"], "null"]
        if self.minimum is not None:
            doc["minimum"] = self.minimum
        if self.maximum is not None:
            doc["maximum"] = self.maximum
        if self.documented_default:
            doc["default"] = self.default
        if self.description is not None:
            doc["description"] = self.description
        doc.update(self.openapi)
        if input_:
            doc.update(self.input_openapi)
        return doc

    def in_input_required(self) -> bool:
        if self.input_required is not None:
            return self.input_required
        return self.default is REQUIRED


_ABSENT: Final = object()


def _reader(attr: str) -> str:
    """The expression reading ``attr`` of ``record``: an attribute, a dotted path of
    attributes or a tuple index; anything else is refused (it becomes source text)."""
    if attr.isdecimal():
        return f"record[{int(attr)}]"
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ValueError(f"attribute {attr!r} is not an identifier, a dotted path or an index")
    return f"record.{attr}"


def _encoder(
    coded: tuple[tuple[Field, str], ...], *, secrets: bool
) -> Callable[[object], dict[str, object]]:
    """A function writing a record as one dict display, as a hand-written ``to_json`` would.

    The source is generated (as ``dataclasses`` generates ``__init__``) from the
    declarations only: JSON names go in as ``repr`` literals, attributes must be
    identifiers (dotted paths or indices for a view), and each codec's encoder and each
    ``when`` is passed in by name, never as text. Consecutive fields with the same
    ``when`` are one ``**{...}`` item, so the keys keep the declared order.
    """
    items: list[str] = []
    namespace: dict[str, object] = {}
    group: list[str] = []
    group_when: Callable[[Any], bool] | None = None

    def close_group() -> None:
        if group:
            namespace[f"when_{len(items)}"] = group_when
            items.append(f"**({{{', '.join(group)}}} if when_{len(items)}(record) else {{}})")
            group.clear()

    for i, (f, attr) in enumerate(coded):
        if f.secret and not secrets:
            continue
        value = _reader(attr)
        if f.codec.encode is not _same:
            namespace[f"write_{i}"] = f.codec.encode
            if f.nullable:
                value = f"(None if (v_{i} := {value}) is None else write_{i}(v_{i}))"
            else:
                value = f"write_{i}({value})"
        item = f"{f.name!r}: {value}"
        if f.when is not group_when:
            close_group()
            group_when = f.when
        if f.when is None:
            items.append(item)
        else:
            group.append(item)
    close_group()
    source = "def encode(record):\n    return {" + ", ".join(items) + "}\n"
    exec(source, namespace)  # noqa: S102 - source built above from declarations, not input
    return cast("Callable[[object], dict[str, object]]", namespace["encode"])


class Schema:
    """A resource's fields, in the order its documents list them.

    Args:
        name: The OpenAPI schema name (``HybridConnection``).
        where: The field name a refusal of the whole document names ("must be a JSON
            object").
        fields: The fields, in document order.
        description: The output schema's description.
        input_name: The input schema's name (the settable fields); None when the
            resource has none.
        input_description: The input schema's description.
        prefix: Put before a field's name in a refusal, for a resource nested in another
            (``grants.`` names ``grants.listen``).
    """

    __slots__ = (
        "_coded",
        "_description",
        "_input_description",
        "_input_name",
        "_prefix",
        "_reads",
        "_view",
        "_writes",
        "fields",
        "name",
        "where",
    )

    def __init__(
        self,
        name: str,
        *,
        where: str,
        fields: Iterable[Field],
        description: str | None = None,
        input_name: str | None = None,
        input_description: str | None = None,
        prefix: str = "",
    ) -> None:
        self.name = name
        self._prefix = prefix
        self.where = where
        self.fields: tuple[Field, ...] = tuple(fields)
        self._coded = tuple((f, f.attr) for f in self.fields if f.attr is not None)
        # The per-field work, flattened once: a device import decodes 10,000 documents
        # and an export encodes as many.
        self._writes = (_encoder(self._coded, secrets=True), _encoder(self._coded, secrets=False))
        # A read-only view (paths, indices, conditional fields) is written, never read.
        self._view = any(f.when is not None or not a.isidentifier() for f, a in self._coded)
        self._reads = tuple(
            (
                f.name,
                prefix + f.name,
                attr,
                f.codec.decode,
                f.nullable,
                f.default,
                f.null_is_default,
                f.check_value if f.checked else None,
            )
            for f, attr in self._coded
        )
        self._description = description
        self._input_name = input_name
        self._input_description = input_description

    def encode(self, record: object, *, secrets: bool = True) -> dict[str, object]:
        """The record's JSON document (keys left out unless ``secrets``)."""
        return self._writes[0 if secrets else 1](record)

    def decode(self, value: object, **given: object) -> dict[str, Any]:
        """The record's constructor arguments from a JSON document, checked field by field.

        ``given`` are attribute values that win over the document's (a name from the URL);
        the document's field is then not read, but the given value is checked. A default
        is trusted as declared.

        Raises:
            ValidationError: Not an object, or the first field (in document order) of the
                wrong type or out of its bounds, named.
        """
        if self._view:
            raise TypeError(f"{self.name} is a read-only view: it is not decoded")
        doc = decode_object(self.where, value)
        out: dict[str, Any] = {}
        for name, where, attr, read, nullable, default, null_is_default, check in self._reads:
            if attr in given:
                decoded = given[attr]
            else:
                raw = doc.get(name, _ABSENT)
                if raw is _ABSENT or (raw is None and null_is_default):
                    if default is not REQUIRED:
                        out[attr] = default
                        continue
                    raw = None
                decoded = None if raw is None and nullable else read(where, raw)
            if check is not None:
                check(decoded, where)
            out[attr] = decoded
        return out

    def check(self, record: object) -> None:
        """Check the values of a built record against the fields' bounds and rules."""
        if self._view:
            raise TypeError(f"{self.name} is a read-only view: it is not checked")
        for f, attr in self._coded:
            f.check_value(getattr(record, attr), self._prefix + f.name)

    def field(self, name: str) -> Field:
        """The field with JSON name ``name`` (KeyError if there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def settable(self) -> tuple[str, ...]:
        """The JSON names a client may set (what a PATCH may change)."""
        return tuple(f.name for f in self.fields if f.settable)

    def document(self) -> Doc:
        """The OpenAPI schema of the resource (its component, or inline in another's)."""
        output: Doc = {"type": "object"}
        if self._description is not None:
            output["description"] = self._description
        required = [f.name for f in self.fields if f.always]
        if required:
            output["required"] = required
        output["properties"] = {f.name: f.document() for f in self.fields}
        return output

    def components(self) -> dict[str, Doc]:
        """The OpenAPI component schemas of the resource and of its input."""
        output = self.document()
        given = [f for f in self.fields if f.settable]
        input_: Doc = {"type": "object"}
        if self._input_description is not None:
            input_["description"] = self._input_description
        required = [f.name for f in given if f.in_input_required()]
        if required:
            input_["required"] = required
        input_["properties"] = {f.name: f.document(input_=True) for f in given}
        if self._input_name is None:
            return {self.name: output}
        return {self.name: output, self._input_name: input_}


def ref(name: str) -> Doc:
    """A reference to the OpenAPI component schema ``name`` (a nested resource's codec)."""
    return {"$ref": _REF + name}
