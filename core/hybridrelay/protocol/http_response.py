"""What a listener's HTTP-mode ``response`` may pass on to an HTTP sender (HC §3.3, RFC 9110).

The codec (:mod:`~hybridrelay.protocol.messages`) accepts every ``statusCode`` in 100..999
and any strings as headers, as Microsoft's relay does. The relay writes the response to
a real HTTP connection, though, where a 1xx or 101 status, a status beyond 599, a header
name that is no token or a value with a control character would desynchronise or break
the sender's connection. :func:`check_response` is the one place that decides; the
listener agent uses the same rules before it sends.
"""

from __future__ import annotations

import re
import string
from typing import Final

from hybridrelay.errors import InvalidMessageError
from hybridrelay.protocol.messages import Response

__all__ = ["check_response", "is_field_value", "is_token"]

# RFC 9110 §5.6.2: token = 1*tchar
_TCHAR: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# RFC 9110 §5.5: a field value holds no control character but HTAB. C1 controls and lone
# surrogates (which cannot even be encoded for the wire) are refused too.
_NOT_IN_VALUE: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def is_token(name: object) -> bool:
    """Whether ``name`` is an HTTP token (RFC 9110 §5.6.2): a valid field name."""
    return isinstance(name, str) and bool(name) and _TCHAR.issuperset(name)


def is_field_value(value: object) -> bool:
    """Whether ``value`` can be written as an HTTP field value as it is."""
    return isinstance(value, str) and _NOT_IN_VALUE.search(value) is None


def check_response(response: Response) -> None:
    """Refuse a response the relay must not pass to an HTTP sender.

    Args:
        response: A decoded listener response.

    Raises:
        InvalidMessageError: The status is not a final status in 200..599 (1xx, 101 and
            600..999 are refused), a header name is not a token (empty, ``:``, spaces,
            non-ASCII), or a header value holds a control character; the message names
            the first problem.
    """
    if not 200 <= response.status_code <= 599:
        raise InvalidMessageError(
            f"response.statusCode {response.status_code} is not a final status (200..599)"
        )
    headers = response.response_headers
    try:
        # All names and all values checked at once (a tab, allowed in values, between
        # them); a failure is looked up header by header below, to be named.
        names = "".join(headers)
        values = "\t".join(headers.values())
    except TypeError:  # not all str
        pass
    else:
        if "" not in headers and _TCHAR.issuperset(names) and not _NOT_IN_VALUE.search(values):
            return
    for name, value in headers.items():
        if not is_token(name):
            raise InvalidMessageError(f"response header name {name[:40]!r} is not a token")
        if not is_field_value(value):
            raise InvalidMessageError(
                f"response header {name[:40]!r} has a control character in its value"
            )
