"""Credentials in URLs: found, and kept out of everything the tool prints or records."""

from __future__ import annotations

import re

# user-only, user:password and token-only userinfo: `scheme://anything-without-slash@`
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# query or fragment parameters that carry a secret: ?token=..., &access_token=..., ;sig=...
_SECRET_PARAMETER = re.compile(
    r"([?&;#](?:[a-z0-9_.-]*(?:token|password|passwd|secret|key|sig|signature|credential|auth)[a-z0-9_.-]*)=)[^&;#\s'\"]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """Every credential of every URL in `text` replaced by *** (`http://user:token@host` -> `http://***@host`,
    `?token=abc` -> `?token=***`)."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_uri(uri: str) -> str:
    """A URI as it may be shown or recorded: its credentials replaced by ***."""
    return redact_text(uri)


def has_credentials(text: str) -> bool:
    """Whether `text` holds a URL credential that `redact_text` would hide."""
    return redact_text(text) != text


def without_userinfo(uri: str) -> str:
    """`http://user:token@host/x` -> `http://host/x`: the same server, named without who asks."""
    return _USERINFO.sub(r"\1", uri)
