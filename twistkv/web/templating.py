"""Jinja2 pages and static assets, loaded from the installed C{twistkv.web} package.

Klein's own templating is C{twisted.web.template}; we use Jinja2 for the
dashboard, so this module is the thin layer Klein lacks. Both templates and
static files are read through the package (C{PackageLoader},
C{importlib.resources}), never through a path relative to the source tree,
so a node installed from a wheel (or even a zip) serves the same pages.

Autoescaping is on for every template: node ids, keys and values shown on
the dashboard are user data. C{StrictUndefined} turns a misspelt variable
into an error in tests instead of a silently blank cell in production.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["PACKAGE", "StaticAsset", "environment", "render", "static_asset"]

#: The package that ships C{templates/} and C{static/}.
PACKAGE = "twistkv.web"

#: One path segment of a static asset: no leading dot (no C{..}, no hidden
#: files), no separators, no escapes; anything else is simply not found.
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

#: Types we ship, set explicitly: C{mimetypes} reads the host's tables,
#: which differ between machines (Windows registry, missing /etc/mime.types).
_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The shared Jinja2 environment (built once: it caches compiled templates)."""
    return Environment(
        loader=PackageLoader(PACKAGE, "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> bytes:
    """Render C{template} with C{context} to UTF-8 bytes."""
    return environment().get_template(template).render(**context).encode("utf-8")


@dataclass(frozen=True, slots=True)
class StaticAsset:
    """A file under C{static/}, with what an HTTP response needs to serve it."""

    body: bytes
    content_type: str
    #: A strong validator: the same bytes always give the same tag.
    etag: str


@lru_cache(maxsize=128)
def static_asset(name: str) -> StaticAsset | None:
    """The static file at C{name} (e.g. C{"twistkv.css"}), or None if there is none.

    C{name} comes straight from the URL, so it is checked segment by segment
    before anything is opened: traversal (C{..}), absolute paths and hidden
    files all come back as None, exactly like a file that does not exist.
    Assets are read once and kept: they only change when the package does.
    """
    segments = name.split("/")
    if not all(_SEGMENT.match(segment) for segment in segments):
        return None
    resource = files(PACKAGE).joinpath("static", *segments)
    if not resource.is_file():
        return None
    body = resource.read_bytes()
    suffix = "." + segments[-1].rsplit(".", 1)[-1] if "." in segments[-1] else ""
    content_type = _TYPES.get(suffix.lower()) or (
        mimetypes.guess_type(segments[-1])[0] or "application/octet-stream"
    )
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticAsset(body=body, content_type=content_type, etag=etag)
