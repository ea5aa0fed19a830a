"""The request-path normaliser: a table of cases, and properties against a model of nginx."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcp_proxy.http1.path import UnsafePath, normalize_path

# (request path, normalised path) -- issue 11's bypasses and SPEC.md's rules.
NORMALISED = [
    (b"/public/../api/payments/x", b"/api/payments/x"),
    (b"/public/%2e%2e/api/payments/x", b"/api/payments/x"),
    (b"/public/%2E%2E/api/payments/x", b"/api/payments/x"),
    (b"/public/.%2E/api/payments/x", b"/api/payments/x"),
    (b"/public/%2e./api/payments/x", b"/api/payments/x"),
    (b"/api//payments/x", b"/api/payments/x"),
    (b"//api///payments//x", b"/api/payments/x"),
    (b"/api/%70ayments/x", b"/api/payments/x"),
    (b"/api/./payments/x", b"/api/payments/x"),
    (b"/api/%2e/payments/x", b"/api/payments/x"),
    (b"/a/./b/%2e%2e/c//d", b"/a/c/d"),
    (b"/%41%5a%61%7a%30%39%2d%2e%5f%7e", b"/AZaz09-._~"),
    (b"/a%20b", b"/a%20b"),
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/caf\xc3\xa9", b"/caf%C3%A9"),
    (b'/a b"<>^`{|}[]#', b"/a%20b%22%3C%3E%5E%60%7B%7C%7D%5B%5D%23"),
    (b"/%25", b"/%25"),
    (b"/%252e%252e/x", b"/%252e%252e/x"),  # decoded once: a literal "%2e%2e" segment
    (b"/%3b/%3B", b"/%3B/%3B"),
    (b"/a;x/b;y=1", b"/a;x/b;y=1"),
    (b"/a/b;x/../c", b"/a/c"),
    (b"/a/b/", b"/a/b/"),
    (b"/a/b/.", b"/a/b/"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/%2e", b"/a/b/"),
    (b"/a/b/%2e%2E", b"/a/"),
    (b"/a/..", b"/"),
    (b"/.", b"/"),
    (b"//", b"/"),
    (b"/...", b"/..."),
    (b"/.a/..b/a./a..", b"/.a/..b/a./a.."),
    (b"/.well-known/acme", b"/.well-known/acme"),
]

# (request path, why it is refused)
REFUSED = [
    (b"/api%2fpayments", "encoded '/'"),
    (b"/api%2Fpayments", "encoded '/'"),
    (b"/public/..%2fapi", "encoded '/'"),
    (b"/api%5cpayments", "encoded '\\'"),
    (b"/api%5Cpayments", "encoded '\\'"),
    (b"/public\\..\\api", "'\\' in path"),
    (b"/a\x00b", "NUL in path"),
    (b"/a%00b", "encoded NUL"),
    (b"/a\x01", "control character"),
    (b"/a\x7f", "control character"),
    (b"/a\x1f", "control character"),
    (b"/a\tb", "control character"),
    (b"/a\r\nb", "control character"),
    (b"/a%0d%0aSet-Cookie:x", "encoded control character"),
    (b"/a%7F", "encoded control character"),
    (b"/a%1f", "encoded control character"),
    (b"/..", "above the root"),
    (b"/../api", "above the root"),
    (b"/%2e%2e/api", "above the root"),
    (b"/a/../..", "above the root"),
    (b"//a//..//..", "above the root"),
    (b"/a/%zz", "malformed"),
    (b"/a/%4", "malformed"),
    (b"/a/%", "malformed"),
    (b"/a/%g0", "malformed"),
    (b"/a/%u002e", "malformed"),
    (b"", "does not start with '/'"),
    (b"api/payments", "does not start with '/'"),
    (b"*", "does not start with '/'"),
    (b"http://host/api", "does not start with '/'"),
    (b"/public/..;/api/payments", "dot segment"),
    (b"/public/..;x/api/payments", "dot segment"),
    (b"/public/.;/api", "dot segment"),
    (b"/public/.;x", "dot segment"),
    (b"/public/%2e%2e;/api", "dot segment"),
    (b"/public/..%3b/api", "dot segment"),
    (b"/a/.%3Bx/../b", "dot segment"),
]

FAST = [b"/", b"/api/payments/x", b"/a/b/", b"/a;x=1/b@c:d/~u_v-w.x", b"/a.b/c..d"]


@pytest.mark.parametrize(("path", "expected"), NORMALISED)
def test_normalises(path: bytes, expected: bytes) -> None:
    assert normalize_path(path) == expected
    assert normalize_path(expected) == expected


@pytest.mark.parametrize(("path", "reason"), REFUSED)
def test_refuses(path: bytes, reason: str) -> None:
    with pytest.raises(UnsafePath, match=re.escape(reason)):
        normalize_path(path)


def test_unsafe_path_is_a_value_error() -> None:
    assert issubclass(UnsafePath, ValueError)


@pytest.mark.parametrize("path", FAST)
def test_a_path_needing_no_work_is_returned_as_it_is(path: bytes) -> None:
    assert normalize_path(path) is path


# --- A model of nginx: what a normalising backend makes of a path -------------------------

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SPELLING = re.compile(rb"%([0-9A-Fa-f]{2})|([^A-Za-z0-9\-._~!$&'()*+,;=:@/%])")


def _spell(match: re.Match[bytes]) -> bytes:
    if match[1] is None:  # a byte not allowed raw in a path
        return b"%%%02X" % match[2][0]
    byte = int(match[1], 16)
    return bytes([byte]) if byte in UNRESERVED else b"%" + match[1].upper()


def one_spelling(path: bytes) -> bytes:
    """Unreserved characters decoded, other escapes upper case: what the proxy promises."""
    return _SPELLING.sub(_spell, path)


class NginxBadRequest(Exception):
    pass


SLASH, DOT = ord("/"), ord(".")


def nginx_resolve(uri: bytes) -> bytes:
    """ngx_http_parse_complex_uri with merge_slashes on (src/http/ngx_http_parse.c).

    nginx decodes escapes into this same state machine, so `%2e` acts as `.`; here the input
    is already decoded (`one_spelling`). Its states: after "/" (`slash`), after "/." (`dot`),
    after "/.." (`dot_dot`), elsewhere (`usual`).
    """
    out = bytearray()
    state = "usual"
    for ch in uri:
        if state == "slash" and ch == SLASH:
            continue  # merge_slashes
        if state == "dot" and ch == SLASH:
            del out[-1]  # "/./": drop the ".", the "/" is already there
            state = "slash"
            continue
        if state == "dot_dot" and ch == SLASH:
            _up(out)
            state = "slash"
            continue
        out.append(ch)
        if ch == SLASH:
            state = "slash"
        elif ch == DOT and state in ("slash", "dot"):
            state = "dot" if state == "slash" else "dot_dot"
        else:
            state = "usual"
    if state == "dot":
        del out[-1]
    elif state == "dot_dot":
        _up(out)
    return bytes(out)


def _up(out: bytearray) -> None:
    """`out` ends with "/..": go back past the segment before it (nginx's `u -= 4` loop)."""
    i = len(out) - 4
    while True:
        if i < 0:
            raise NginxBadRequest  # ".." above the root: nginx answers 400
        if out[i] == SLASH:
            del out[i + 1 :]
            return
        i -= 1


def test_the_nginx_model_agrees_with_nginx_on_known_cases() -> None:
    assert nginx_resolve(b"/a/b/../c") == b"/a/c"
    assert nginx_resolve(b"/a//b/./c/") == b"/a/b/c/"
    assert nginx_resolve(b"/a/b/..") == b"/a/"
    assert nginx_resolve(b"/a/b/.") == b"/a/b/"
    assert nginx_resolve(b"/a/...") == b"/a/..."
    assert nginx_resolve(b"/a/..;/b") == b"/a/..;/b"  # nginx does not know path parameters
    with pytest.raises(NginxBadRequest):
        nginx_resolve(b"/a/../../b")


# What the spec refuses, said independently of the implementation.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPE = re.compile(rb"%(?:2[fF]|5[cC]|[01][0-9A-Fa-f]|7[fF])")
_FORBIDDEN_RAW = re.compile(rb"[\x00-\x1f\x7f\\]")
_DOT_WITH_PARAMETERS = re.compile(rb"\.\.?(?:;|%3B).*", re.DOTALL)


def should_refuse(path: bytes) -> bool:
    if not path.startswith(b"/") or _BAD_ESCAPE.search(path):
        return True
    if _FORBIDDEN_ESCAPE.search(path) or _FORBIDDEN_RAW.search(path):
        return True
    spelled = one_spelling(path)
    if any(_DOT_WITH_PARAMETERS.fullmatch(segment) for segment in spelled.split(b"/")):
        return True
    try:
        nginx_resolve(spelled)
    except NginxBadRequest:
        return True
    return False


# --- Generated paths ------------------------------------------------------------------------

PIECES = [
    "/", "/", "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "a", "b", "ap", "api",
    "payments", "public", ";", ";x", "%3b", "%2f", "%2F", "%5c", "\\", "%70", "%61", "%7e",
    "%25", "%20", "%c3%a9", "%", "%4", "%zz", "%00", "\x00", "%0a", "\x7f", "é", "~", "@",
    ":", '"', " ", "%41", "...",
]  # fmt: skip
ALWAYS_REFUSED = ["%2f", "%2F", "%5c", "\\", "%", "%4", "%zz", "%00", "\x00", "%0a", "\x7f"]
LEADS = [b"/", b"/", b"/", b"/", b"", b"."]


def _paths(pieces: list[str]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda lead, body: lead + b"".join(body),
        st.sampled_from(LEADS),
        st.lists(st.sampled_from([piece.encode() for piece in pieces]), max_size=14),
    )


# Half of them without the pieces that are always refused, so that many get through.
paths = st.one_of(_paths(PIECES), _paths([p for p in PIECES if p not in ALWAYS_REFUSED]))
ROUTES = [b"/", b"/a", b"/a/", b"/api", b"/api/", b"/api/payments", b"/public", b"/a%20", b"/.."]


@settings(max_examples=600)
@given(paths)
@example(b"/public/..;/api/payments")
@example(b"/public/%2e%2e/api/payments")
def test_refuses_exactly_what_the_spec_refuses_and_otherwise_agrees_with_nginx(path: bytes) -> None:
    if should_refuse(path):
        with pytest.raises(UnsafePath):
            normalize_path(path)
        return
    assert normalize_path(path) == nginx_resolve(one_spelling(path))


@settings(max_examples=400)
@given(paths, st.data())
def test_routes_see_what_nginx_would_route(path: bytes, data: st.DataObject) -> None:
    try:
        out = normalize_path(path)
    except UnsafePath:
        return
    nginx = nginx_resolve(one_spelling(path))
    prefixes = [nginx[:cut] for cut in range(1, len(nginx) + 1)] + ROUTES
    for prefix in [*ROUTES, data.draw(st.sampled_from(prefixes))]:
        assert out.startswith(prefix) == nginx.startswith(prefix)


ESCAPE = re.compile(rb"%(..)", re.DOTALL)
RAW_IN_OUTPUT = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")


@settings(max_examples=400)
@given(st.one_of(paths, st.binary(max_size=40), st.binary(max_size=40).map(b"/".__add__)))
def test_output_is_normal_and_normalising_it_again_changes_nothing(path: bytes) -> None:
    try:
        out = normalize_path(path)
    except UnsafePath:  # the only exception it raises
        return
    assert out.startswith(b"/")
    assert RAW_IN_OUTPUT.fullmatch(out)
    assert not _FORBIDDEN_ESCAPE.search(out)
    assert b"//" not in out
    segments = out.split(b"/")
    assert b"." not in segments
    assert b".." not in segments
    for escape in ESCAPE.findall(out):
        assert re.fullmatch(rb"[0-9A-F]{2}", escape)
        assert int(escape, 16) not in UNRESERVED
    assert normalize_path(out) == out
