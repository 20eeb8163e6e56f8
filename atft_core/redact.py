"""Keep secrets out of every message: URL passwords, secret query values and secret environment values.

Used wherever text may reach a log, an artifact, a file or an error: S3 failures (`atft_core.s3`),
study storage URLs (`atft_core.hpo.storage`) and the pipeline's provenance.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Environment variables whose values are secrets: scrubbed from any text we emit.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_SECRET_QUERY = re.compile(r"pass|secret|token|signature|credential|key", re.I)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host/...` and secret-looking query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: return it untouched (urlunsplit would drop sqlite:////'s empty host)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Scrub URL passwords and the values of known secret environment variables from `text`."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    for name in SECRET_ENV:
        value = (os.environ if env is None else env).get(name)
        if value and len(value) >= 4:  # never blank out single characters everywhere
            text = text.replace(value, f"<{name}>")
    return text
