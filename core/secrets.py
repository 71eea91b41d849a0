"""Credentials in URLs: found, and kept out of everything the tool prints or records."""

from __future__ import annotations

import re

# user-only, user:password and token-only userinfo, up to the authority's last `@` (a password may hold one)
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]*@")
# query or fragment parameters that carry a secret: ?token=..., &access_token=..., ;sig=...; broad on purpose:
# hiding a harmless `?keyword=` in a message costs nothing
_SECRET_PARAMETER = re.compile(
    r"([?&;#](?:[a-z0-9_.-]*(?:token|password|passwd|pwd|pass|secret|key|sig|signature|credential|auth)"
    r"[a-z0-9_.-]*)=)[^&;#\s'\"]+",
    re.IGNORECASE,
)
# What refuses a command (and erases a run): a credential beyond doubt, in a web URL, never a look-alike
_WEB_USERINFO = re.compile(r"https?://[^/\s?#]+@", re.IGNORECASE)
_SECRET_NAMES = ("token", "access_token", "auth_token", "api_key", "apikey", "password", "passwd", "secret",
                 "client_secret", "pwd", "sig", "signature", "x-amz-signature", "x-amz-security-token")  # fmt: skip
_NAMED_SECRET = re.compile(r"[?&;#](?:" + "|".join(re.escape(n) for n in _SECRET_NAMES) + r")=[^&;#\s]", re.I)


def redact_text(text: str) -> str:
    """Every credential of every URL in `text` replaced by *** (`http://user:token@host` -> `http://***@host`,
    `?token=abc` -> `?token=***`)."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_uri(uri: str) -> str:
    """A URI as it may be shown or recorded: its credentials replaced by ***."""
    return redact_text(uri)


def has_credentials(text: str) -> bool:
    """Whether `text` certainly holds a URL credential: userinfo in an http(s) URL (a user name alone can be a
    token: `http://TOKEN@host`) or a parameter named like one (`?token=`, `&api_key=`, `X-Amz-Signature=`).
    Narrower than what `redact_text` hides, since finding one stops a command."""
    return bool(_WEB_USERINFO.search(text) or _NAMED_SECRET.search(text))


def without_userinfo(uri: str) -> str:
    """`http://user:token@host/x` -> `http://host/x`: the same server, named without who asks."""
    return _USERINFO.sub(r"\1", uri)
