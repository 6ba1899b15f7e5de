"""Which proxy a URL goes through (``_proxy``, sans-IO): the environment variables and their
case, ``NO_PROXY`` in each of its forms, loopback, the explicit ``proxy=``, ``trust_env=False``,
and proxy URLs we refuse. One table, one row per rule."""

from __future__ import annotations

import pytest

from infernet_async import InfernetClient
from infernet_async._proxy import Proxy, parse_proxy_url, resolve_proxies

P = "http://proxy.corp:3128"
PROXY = Proxy("proxy.corp", 3128)
OTHER = Proxy("other.corp", 8080)

# (environment, URL, expected proxy or None)
CASES: list[tuple[str, dict[str, str], str, Proxy | None]] = [
    ("https origin, HTTPS_PROXY", {"HTTPS_PROXY": P}, "https://api.example.com", PROXY),
    ("https origin, only HTTP_PROXY", {"HTTP_PROXY": P}, "https://api.example.com", None),
    ("http origin, HTTP_PROXY", {"HTTP_PROXY": P}, "http://api.example.com", PROXY),
    ("http origin, only HTTPS_PROXY", {"HTTPS_PROXY": P}, "http://api.example.com", None),
    ("ALL_PROXY for https", {"ALL_PROXY": P}, "https://api.example.com", PROXY),
    ("ALL_PROXY for http", {"all_proxy": P}, "http://api.example.com", PROXY),
    (
        "the scheme's own before ALL_PROXY",
        {"ALL_PROXY": "http://other.corp:8080", "HTTPS_PROXY": P},
        "https://api.example.com",
        PROXY,
    ),
    ("lower case alone", {"https_proxy": P}, "https://api.example.com", PROXY),
    (
        "lower case wins",
        {"https_proxy": P, "HTTPS_PROXY": "http://other.corp:8080"},
        "https://api.example.com",
        PROXY,
    ),
    (
        "an empty lower case hides the upper case",
        {"https_proxy": "", "HTTPS_PROXY": P},
        "https://api.example.com",
        None,
    ),
    ("no scheme means http://", {"HTTPS_PROXY": "proxy.corp:3128"}, "https://a.example", PROXY),
    (
        "default port 80",
        {"HTTPS_PROXY": "http://proxy.corp"},
        "https://a.example",
        Proxy("proxy.corp", 80),
    ),
    (
        "credentials from the userinfo, percent-decoded",
        {"HTTPS_PROXY": "http://al%40ice:p%3Aw@proxy.corp:3128"},
        "https://api.example.com",
        Proxy("proxy.corp", 3128, "al@ice", "p:w"),
    ),
    (
        "CGI: HTTP_PROXY may be a client's header (httpoxy)",
        {"HTTP_PROXY": P, "REQUEST_METHOD": "GET"},
        "http://api.example.com",
        None,
    ),
    (
        "CGI: http_proxy in lower case still counts",
        {"http_proxy": P, "REQUEST_METHOD": "GET"},
        "http://api.example.com",
        PROXY,
    ),
    # Loopback is never proxied by the environment.
    ("localhost", {"HTTPS_PROXY": P}, "https://localhost:8443", None),
    ("localhost with a trailing dot", {"HTTP_PROXY": P}, "http://localhost.:8080", None),
    ("*.localhost", {"HTTP_PROXY": P}, "http://api.localhost:8080", None),
    ("127.0.0.1", {"ALL_PROXY": P}, "http://127.0.0.1:8080", None),
    ("127.1.2.3", {"ALL_PROXY": P}, "http://127.1.2.3:8080", None),
    ("::1", {"ALL_PROXY": P}, "http://[::1]:8080", None),
    ("IPv4-mapped loopback", {"ALL_PROXY": P}, "http://[::ffff:127.0.0.1]:8080", None),
    # NO_PROXY
    ("NO_PROXY *", {"HTTPS_PROXY": P, "NO_PROXY": "*"}, "https://api.example.com", None),
    (
        "NO_PROXY host",
        {"HTTPS_PROXY": P, "NO_PROXY": "api.example.com"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY domain: subdomain",
        {"HTTPS_PROXY": P, "NO_PROXY": "example.com"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY .domain: subdomain",
        {"HTTPS_PROXY": P, "NO_PROXY": ".example.com"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY .domain: the domain",
        {"HTTPS_PROXY": P, "NO_PROXY": ".example.com"},
        "https://example.com",
        None,
    ),
    (
        "NO_PROXY *.domain",
        {"HTTPS_PROXY": P, "NO_PROXY": "*.example.com"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY is not a substring match",
        {"HTTPS_PROXY": P, "NO_PROXY": "example.com"},
        "https://notexample.com",
        PROXY,
    ),
    (
        "NO_PROXY other host",
        {"HTTPS_PROXY": P, "NO_PROXY": "other.com"},
        "https://api.example.com",
        PROXY,
    ),
    (
        "NO_PROXY case",
        {"HTTPS_PROXY": P, "NO_PROXY": "API.Example.COM"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY list with spaces",
        {"HTTPS_PROXY": P, "NO_PROXY": "a.com, b.com ,example.com"},
        "https://api.example.com",
        None,
    ),
    (
        "NO_PROXY host:port, same port",
        {"HTTPS_PROXY": P, "NO_PROXY": "example.com:443"},
        "https://example.com",
        None,
    ),
    (
        "NO_PROXY host:port, other port",
        {"HTTPS_PROXY": P, "NO_PROXY": "example.com:8443"},
        "https://example.com",
        PROXY,
    ),
    ("NO_PROXY IP", {"HTTP_PROXY": P, "NO_PROXY": "10.1.2.3"}, "http://10.1.2.3:8080", None),
    (
        "NO_PROXY CIDR in",
        {"HTTP_PROXY": P, "NO_PROXY": "10.0.0.0/8"},
        "http://10.20.30.40:8080",
        None,
    ),
    (
        "NO_PROXY CIDR out",
        {"HTTP_PROXY": P, "NO_PROXY": "10.0.0.0/8"},
        "http://11.0.0.1:8080",
        PROXY,
    ),
    (
        "NO_PROXY CIDR never matches a name",
        {"HTTP_PROXY": P, "NO_PROXY": "10.0.0.0/8"},
        "http://ten.example",
        PROXY,
    ),
    (
        "NO_PROXY IPv6 CIDR",
        {"HTTP_PROXY": P, "NO_PROXY": "fd00::/8"},
        "http://[fd00::5]:8080",
        None,
    ),
    (
        "NO_PROXY [v6]:port",
        {"HTTP_PROXY": P, "NO_PROXY": "[fd00::5]:8080"},
        "http://[fd00::5]:8080",
        None,
    ),
    (
        "no_proxy lower case wins",
        {"HTTPS_PROXY": P, "no_proxy": "", "NO_PROXY": "*"},
        "https://a.example",
        PROXY,
    ),
]


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [pytest.param(env, url, expected, id=name) for name, env, url, expected in CASES],
)
def test_environment(env: dict[str, str], url: str, expected: Proxy | None) -> None:
    from yarl import URL

    parsed = URL(url)
    settings = resolve_proxies(environ=env)
    assert settings.select(parsed.scheme, parsed.raw_host or "", parsed.port) == expected


def test_an_explicit_proxy_wins_everywhere_loopback_included() -> None:
    env = {"HTTPS_PROXY": "http://other.corp:8080", "NO_PROXY": "*"}
    settings = resolve_proxies(P, environ=env)
    assert settings.select("https", "api.example.com", 443) == PROXY
    assert settings.select("http", "127.0.0.1", 8080) == PROXY


def test_trust_env_false_reads_nothing() -> None:
    settings = resolve_proxies(trust_env=False, environ={"HTTPS_PROXY": P, "ALL_PROXY": P})
    assert not settings.enabled
    assert settings.select("https", "api.example.com", 443) is None


def test_the_environment_is_read_when_the_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", P)
    client = InfernetClient("https://api.example.com", "tok")
    monkeypatch.delenv("HTTPS_PROXY")
    from yarl import URL

    assert client._transport.proxy_for(URL("https://api.example.com/x")) == PROXY
    off = InfernetClient("https://api.example.com", "tok", trust_env=False)
    assert off._transport.proxy_for(URL("https://api.example.com/x")) is None


def test_the_repr_and_errors_never_show_the_password() -> None:
    proxy = parse_proxy_url("http://alice:hunter22@proxy.corp:3128")
    assert "hunter22" not in repr(proxy) and "alice" not in repr(proxy)
    assert proxy.url == "http://proxy.corp:3128" and proxy.address == "proxy.corp:3128"
    assert proxy.authorization == "Basic YWxpY2U6aHVudGVyMjI="
    with pytest.raises(ValueError) as caught:
        parse_proxy_url("socks5://alice:hunter22@proxy.corp:1080")
    assert "hunter22" not in str(caught.value) and "SOCKS" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://proxy.corp:1080", "SOCKS proxies are not supported"),
        ("https://proxy.corp:443", "https:// proxies are not supported"),
        ("http://", "no host"),
        ("http://proxy.corp:99999", "malformed"),
        ("http://a%3Ab:pw@proxy.corp", "contains ':'"),
        ("http://a:p%0Aw@proxy.corp", "line break"),
    ],
)
def test_refused_proxy_urls(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InfernetClient("https://api.example.com", "tok", proxy=value)


def test_an_unusable_environment_proxy_fails_at_build_time_for_the_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy.corp:1080")
    with pytest.raises(ValueError, match="ALL_PROXY: SOCKS proxies are not supported"):
        InfernetClient("https://api.example.com", "tok")
    # Not where it does not apply: loopback (the embedded control plane), or trust_env=False.
    InfernetClient("http://127.0.0.1:8080", "tok")
    InfernetClient("https://api.example.com", "tok", trust_env=False)


async def test_proxy_and_a_session_of_yours_do_not_mix() -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="keeps its own proxy settings"):
            InfernetClient("https://api.example.com", "tok", session=session, proxy=P)
