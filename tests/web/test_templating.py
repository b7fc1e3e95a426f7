"""Tests for twistkv.web.templating: package-loaded Jinja2 templates and static assets."""

from __future__ import annotations

from dataclasses import replace
from importlib.resources import files

import jinja2
import pytest
from test_views import SNAPSHOT

from twistkv.web.templating import environment, render, static_asset
from twistkv.web.views import node_view


def test_templates_load_through_the_package() -> None:
    """Templates come from the twistkv.web package (works from a wheel), not a source path."""
    loader = environment().loader
    assert isinstance(loader, jinja2.PackageLoader)
    assert loader.package_name == "twistkv.web"


def test_index_renders_the_view_model() -> None:
    """index.html shows the node id, uptime, key count and ops/s from the view model."""
    page = render("index.html", node=node_view(SNAPSHOT)).decode()
    assert "<title>twistkv · n1</title>" in page
    assert '<dd id="keys">7</dd>' in page
    assert '<dd id="uptime" title="90.0 s">1m 30s</dd>' in page
    assert '<dd id="ops">12.3</dd>' in page


def test_autoescape_is_on() -> None:
    """User-controlled text (here a hostile cluster name and Host) is HTML-escaped."""
    hostile = replace(SNAPSHOT, cluster_name="<script>alert(1)</script>", host='"><img src=x>')
    page = render("index.html", node=node_view(hostile)).decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '"><img' not in page


def test_missing_variable_is_an_error() -> None:
    """StrictUndefined: a template reading a missing field fails loudly instead of rendering blank."""
    view = node_view(SNAPSHOT)
    del view["uptime_human"]
    with pytest.raises(jinja2.UndefinedError):
        render("index.html", node=view)


def test_static_asset_bytes_match_the_package_file() -> None:
    """A shipped asset is served byte for byte with a type and a strong ETag."""
    asset = static_asset("twistkv.css")
    assert asset is not None
    assert asset.body == files("twistkv.web").joinpath("static", "twistkv.css").read_bytes()
    assert asset.content_type == "text/css; charset=utf-8"
    assert asset.etag.startswith('"') and asset.etag.endswith('"')


@pytest.mark.parametrize(
    "name",
    ["", "missing.css", "../app.py", "..", ".hidden", "a//b", "/etc/passwd", "x\\..\\y", "../templates/index.html"],
)
def test_static_asset_refuses_traversal_and_missing(name: str) -> None:
    """Names that escape static/, are hidden, malformed or absent are simply not found."""
    assert static_asset(name) is None


def test_templates_are_not_static_assets() -> None:
    """Templates are not reachable as static files (different directory)."""
    assert static_asset("index.html") is None
