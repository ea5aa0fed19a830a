"""Pool TLS settings: what `check` says of their files, when a context is kept, what is offered."""

from __future__ import annotations

import contextlib
import datetime
import ssl
import textwrap
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from mcp_proxy.config import ConfigError, load, parse
from mcp_proxy.config.model import PoolTls
from mcp_proxy.config.tlsfiles import expiry_warnings
from mcp_proxy.upstream.tls import (
    _OFFER,
    PoolContext,
    TlsSettingsError,
    build,
    offering,
    pool_contexts,
)

CA = trustme.CA()
LEAF = CA.issue_cert("proxy.internal")


def config_text(tls: str, url: str = "https://10.0.0.1") -> str:
    return textwrap.dedent(f"""\
        pools:
          p:
            kind: public
            backends: [{{url: "{url}"}}]
            tls: {tls}
        auth: {{default: none}}
        routes: [{{name: r, to: {{pools: [p]}}}}]
        """)


def write_pair(tmp_path: Path, leaf: trustme.LeafCert = LEAF) -> None:
    (tmp_path / "c.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tmp_path / "k.pem"))


def problems(tmp_path: Path, tls: str, url: str = "https://10.0.0.1") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(config_text(tls, url), tmp_path)
    return info.value.problems


def test_a_valid_pair_and_ca_load(tmp_path: Path):
    write_pair(tmp_path)
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = parse(config_text("{ca: ca.pem, cert: c.pem, key: k.pem}"), tmp_path)
    assert config.pools["p"].tls == PoolTls(ca="ca.pem", cert="c.pem", key="k.pem")


def test_a_missing_file_names_its_key_and_path(tmp_path: Path):
    assert problems(tmp_path, "{ca: nope.pem}") == [
        f"pools.p.tls.ca: 'nope.pem': no such file ({tmp_path / 'nope.pem'}) (line 5)"
    ]


def test_a_ca_file_without_a_certificate(tmp_path: Path):
    (tmp_path / "ca.pem").write_text("hello\n")
    assert problems(tmp_path, "{ca: ca.pem}") == [
        "pools.p.tls.ca: holds no PEM certificate (line 5)"
    ]


def test_a_key_of_another_certificate(tmp_path: Path):
    write_pair(tmp_path)
    CA.issue_cert("other").private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    assert problems(tmp_path, "{cert: c.pem, key: k.pem}") == [
        "pools.p.tls.key: does not match the certificate (the first one in cert) (line 5)"
    ]


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path):
    write_pair(tmp_path)
    key = serialization.load_pem_private_key(LEAF.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "k.pem").write_bytes(encrypted)
    assert problems(tmp_path, "{cert: c.pem, key: k.pem}") == [
        "pools.p.tls.key: the key is encrypted (give it unencrypted) (line 5)"
    ]


def test_a_chain_out_of_order(tmp_path: Path):
    intermediate = CA.create_child_ca()
    leaf = intermediate.issue_cert("proxy.internal")
    leaf_pem, *rest = [blob.bytes() for blob in leaf.cert_chain_pems]
    (tmp_path / "c.pem").write_bytes(leaf_pem + CA.cert_pem.bytes() + b"".join(rest))
    leaf.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    assert problems(tmp_path, "{cert: c.pem, key: k.pem}") == [
        "pools.p.tls.cert: chain out of order: certificate 1 did not issue 0 (line 5)"
    ]


def test_cert_without_key(tmp_path: Path):
    assert problems(tmp_path, "{cert: c.pem}") == [
        "pools.p.tls: give cert and key together (the client certificate and its key) (line 5)"
    ]


def test_a_server_name_that_is_no_host_name(tmp_path: Path):
    assert problems(tmp_path, "{server_name: 'a b'}") == [
        "pools.p.tls.server_name: 'a b' is not a host name (the name the backends' certificate "
        "has) (line 5)"
    ]


def test_a_tls_block_on_a_pool_without_https_backends_is_a_problem(tmp_path: Path):
    assert problems(tmp_path, "{}", url="http://10.0.0.1") == [
        "pools.p.tls: no backend of this pool is https: unused (line 5)"
    ]


def test_the_version_changes_with_a_tls_file_and_only_then(tmp_path: Path):
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text("{ca: ca.pem}"))
    first, again = load(path).version, load(path).version
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert first == again != load(path).version


def test_the_running_context_is_kept_for_the_same_settings_and_bytes(tmp_path: Path):
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = PoolTls(ca="ca.pem")
    running = build("p", settings, tmp_path)
    assert build("p", settings, tmp_path, running) is running
    assert build("p", PoolTls(ca="ca.pem", server_name="x"), tmp_path, running) is not running
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert build("p", settings, tmp_path, running) is not running


def test_the_context_verifies_and_speaks_http11_only(tmp_path: Path):
    context = build("p", None, tmp_path).context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def handshake(client: PoolContext, server: ssl.SSLContext) -> ssl.SSLObject:
    """A whole handshake in memory (no sockets), the TLS 1.3 ticket read too."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="backend.internal")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (tls_client, tls_server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    with pytest.raises(ssl.SSLWantReadError):
        tls_client.read()  # takes in the session ticket the server sent after the handshake
    return tls_client


def test_a_session_is_offered_only_to_the_context_it_was_made_under(tmp_path: Path):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("backend.internal").configure_cert(server)
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    mine = build("a", PoolTls(ca="ca.pem"), tmp_path).context
    twin = build("b", PoolTls(ca="ca.pem"), tmp_path).context  # same settings, another pool
    first = handshake(mine, server)
    assert not first.session_reused and first.session is not None
    with offering(mine, first.session):
        assert handshake(mine, server).session_reused
        assert not handshake(twin, server).session_reused  # never offered to another pool
    assert _OFFER.get() is None
    assert not handshake(mine, server).session_reused  # nothing offered outside `offering`


def test_check_warns_of_a_client_certificate_or_ca_expiring_within_14_days(tmp_path: Path):
    now = datetime.datetime.now(datetime.UTC)
    soon = CA.issue_cert("proxy.internal", not_after=now + datetime.timedelta(days=3, hours=1))
    write_pair(tmp_path, soon)
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))  # trustme's CA lasts for years
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text("{ca: ca.pem, cert: c.pem, key: k.pem}"))
    loaded = load(path)
    [warning] = expiry_warnings(loaded.config, str(path), now)
    assert warning.path == ("pools", "p", "tls", "cert")
    assert warning.message.startswith("the certificate ") and "trustme" in warning.message
    assert " expires in 3 days (" in warning.message  # the subject (RFC 4514), then when
    later = now + datetime.timedelta(days=4)
    assert "has expired" in expiry_warnings(loaded.config, str(path), later)[0].message


def test_a_file_gone_after_the_check_is_named_as_check_names_it(tmp_path: Path):
    CA.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = parse(config_text("{ca: ca.pem}"), tmp_path)
    (tmp_path / "ca.pem").unlink()  # between load and building the snapshot
    with pytest.raises(TlsSettingsError) as info:
        pool_contexts(config, tmp_path, {})
    assert str(info.value).startswith("pools.p.tls.ca: 'ca.pem': no such file")
