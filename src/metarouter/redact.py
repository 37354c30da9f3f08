"""Provider secrets never leave the gateway: what an upstream says (an error that echoes the Authorization header,
a URL with ``?key=``) is masked before it reaches a client, a stored record or a log line.

Two nets: the provider keys configured in this process, wherever they appear, and strings shaped like keys or
credentials (``sk-…``, ``AIza…``, ``Bearer …``, ``api_key=…``), whoever they belong to.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "[redacted]"
MIN_SECRET = 8  # shorter configured values would mask ordinary words

_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None

_TOKEN = r"[A-Za-z0-9._~+/=\-]{8,}"  # what a key or token is made of (RFC 6750's token68, and at least 8 of it)
_KEY_SHAPED = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}"  # OpenAI, Anthropic, DeepSeek, this gateway (sk-proj-…, sk-ant-…)
    r"|\bAIza[0-9A-Za-z_\-]{30,}"  # Google API keys
    r"|(?i:(?<=\bbearer )|(?<=[?&]key=)|(?<=\bapi[-_]key=)|(?<=\bapi[-_]key: )|(?<=\bx-api-key: )"
    r"|(?<=\bx-goog-api-key: )|(?<=\bauthorization: basic )|(?<=\bauthorization: )(?!bearer\b|basic\b))" + _TOKEN
)


def register_secret(value: str | None) -> None:
    """Mask ``value`` (a configured provider key) wherever it appears from now on, in this process."""
    global _secrets_re
    if not value or len(value) < MIN_SECRET or value in _secrets:
        return
    _secrets.add(value)
    _secrets_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    if _secrets_re is not None:
        text = _secrets_re.sub(MASK, text)
    return _KEY_SHAPED.sub(MASK, text)


def redact_obj(obj: Any) -> Any:
    """``redact`` every string in a JSON-like value (keys of dicts included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj
