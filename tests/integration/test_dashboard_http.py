"""``/ui`` and the dashboard's admin endpoints over HTTP on the real ``llmdock serve`` (no Docker): the
files, their Content-Security-Policy and language, the admin rules they follow (open gateway: local
callers only; with keys: the page for anyone, every call it makes for an admin key), and the files
in the wheel."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli, own_home
from tests.support.gateway import Served, serve

FILES = ("index.html", "app.js", "app.css", "i18n.json")


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with (
        own_home(tmp_path_factory.mktemp("ui-open")),
        serve(tmp_path_factory.mktemp("ui-open-serve"), "--no-docker") as gw,
    ):
        yield gw


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str, str]]:
    with own_home(tmp_path_factory.mktemp("ui-keyed")):
        admin = json.loads(cli("keys", "create", "boss", "--admin", "--json").stdout)["key"]
        user = json.loads(cli("keys", "create", "app", "--json").stdout)["key"]
        with serve(tmp_path_factory.mktemp("ui-keyed-serve"), "--no-docker") as gw:
            yield gw, admin, user


def test_page_and_files_carry_the_csp_and_the_type(open_gw: Served) -> None:
    for path, ctype in (
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/i18n.json", "application/json"),
    ):
        r = httpx.get(open_gw.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "http" not in csp and "unsafe" not in csp  # this origin only, no inline code
        assert r.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(open_gw.url + "/ui/secret.py")
    assert missing.status_code == 404 and "content-security-policy" in missing.headers
    assert httpx.get(open_gw.url + "/ui/static/app.js").status_code == 404  # the four names, nothing else
    assert httpx.post(open_gw.url + "/ui").status_code == 404


@pytest.mark.parametrize(("accept", "lang"), [("zh-CN,zh;q=0.9", "zh"), ("en-GB,en", "en"), (None, "en")])
def test_the_page_language_follows_accept_language(open_gw: Served, accept: str | None, lang: str) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    page = httpx.get(open_gw.url + "/ui", headers=headers).text
    assert f'<html lang="{lang}"' in page


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:8000"},  # DNS rebinding: a page of another name that resolves here
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_open_gateway_gives_the_page_only_to_local_callers(open_gw: Served, headers: dict[str, str]) -> None:
    r = httpx.get(open_gw.url + "/ui", headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    assert "content-security-policy" in r.headers


def test_dashboard_endpoints_follow_the_admin_rules(open_gw: Served) -> None:
    r = httpx.post(
        open_gw.url + "/admin/v1/plan", content=b'{"model": "/m"}', headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415  # a change-shaped call from a form is refused before anything runs
    assert httpx.get(open_gw.url + "/admin/v1/usage/series?step=30").status_code == 400
    got = httpx.get(open_gw.url + "/admin/v1/usage/series?step=60").json()
    assert got == {
        "step": 60,
        "columns": ["t", "requests", "errors", "prompt_tokens", "completion_tokens"],
        "series": [],
    }
    paths = httpx.get(open_gw.url + "/openapi.json").json()["paths"]
    assert {"/admin/v1/inventory", "/admin/v1/phases", "/admin/v1/usage/series", "/admin/v1/plan"} <= set(
        paths
    )
    assert "requestBody" in paths["/admin/v1/plan"]["post"]


def test_with_keys_the_page_loads_for_anyone_and_its_calls_need_an_admin_key(
    keyed: tuple[Served, str, str],
) -> None:
    gw, admin, user = keyed
    assert httpx.get(gw.url + "/ui", headers={"Host": "dash.example.com"}).status_code == 200  # no data in it
    series = gw.url + "/admin/v1/usage/series"
    assert httpx.get(series).status_code == 401
    assert httpx.get(series, headers={"Authorization": f"Bearer {user}"}).status_code == 403
    assert httpx.get(series, headers={"Authorization": f"Bearer {admin}"}).status_code == 200


@pytest.mark.slow
def test_the_files_ship_in_the_wheel(tmp_path: Path) -> None:
    from llmdock.bundle.wheel import llmdock_wheel

    wheel, _ = llmdock_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"llmdock/gateway/static/{f}" for f in FILES} <= names
