"""Secrets out of everything autoprompt writes or prints: a storage URL's password becomes *** in
configs, recorded command lines, prompt files and messages. (storage.py keeps the real URLs this
process was given, to open a study again.)"""

from __future__ import annotations

import re

REDACTED = "***"
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<secret>[^/@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&\s]*)", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with every URL password (``user:pass@``, ``?password=``) replaced by ***."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)


def redact(data):
    """JSON-like data with redact_url applied to every string in it (a config, a prompt file's search)."""
    if isinstance(data, str):
        return redact_url(data)
    if isinstance(data, dict):
        return {key: redact(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(value) for value in data]
    return data


def redact_text(text: str, url: str) -> str:
    """A message with the URL's password taken out wherever it appears (a driver may quote it)."""
    text = redact_url(text)
    for secret in [m["secret"] for m in _USERINFO.finditer(url)] + [m["secret"] for m in _QUERY_SECRET.finditer(url)]:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
