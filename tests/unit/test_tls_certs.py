"""Certificate/key pairs (tls/certs.py), SNI choice (tls/contexts.py), identity fields."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from mcp_proxy import cli
from mcp_proxy.config import ConfigError, load
from mcp_proxy.tls.certs import CertificateProblem, expiry_warning, load_pair
from mcp_proxy.tls.contexts import build
from mcp_proxy.tls.listener import _field_value
from mcp_proxy.tls.session import is_identity_field
from tests.tls_helpers import Files, Pki

NOW = datetime.datetime.now(datetime.UTC)


def test_a_pair_is_described_by_its_names_and_expiry(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pair = load_pair(
        *map(str, pki.server("API.example.test", "*.wild.test", "10.0.0.1").pair().values())
    )
    assert pair.names == ("api.example.test", "*.wild.test")
    assert pair.addresses == ("10.0.0.1",)
    assert pair.describe()["names"] == ["api.example.test", "*.wild.test", "10.0.0.1"]


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    one, two = pki.server("a.test"), pki.server("b.test")
    with pytest.raises(CertificateProblem, match="the key does not match the certificate"):
        load_pair(str(one.cert), str(two.key))


def test_a_chain_out_of_order_is_refused(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    intermediate = pki.ca.create_child_ca()
    leaf = intermediate.issue_cert("a.test")
    chain = [blob.bytes() for blob in leaf.cert_chain_pems]  # leaf, intermediate
    good = Files(tmp_path / "good.pem", tmp_path / "key.pem")
    leaf.private_key_pem.write_to_path(str(good.key))
    good.cert.write_bytes(b"".join(chain))
    load_pair(str(good.cert), str(good.key))
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(chain[0] + pki.ca.cert_pem.bytes())  # leaf, then the wrong issuer
    with pytest.raises(CertificateProblem, match="out of order: certificate 2"):
        load_pair(str(swapped), str(good.key))


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"hello", "not a PEM certificate")],
)
def test_unreadable_or_not_pem(tmp_path: Path, content: bytes | None, message: str) -> None:
    pki = Pki(tmp_path)
    pair = pki.server("a.test")
    target = tmp_path / "broken.pem"
    if content is not None:
        target.write_bytes(content)
    with pytest.raises(CertificateProblem, match=message):
        load_pair(str(target), str(pair.key))
    with pytest.raises(CertificateProblem, match="not a PEM private key"):
        load_pair(str(pair.cert), str(pair.cert))


def test_expiry_warning_within_14_days_only(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    soon = load_pair(*map(str, pki.server("a.test", days=3).pair().values()))
    later = load_pair(*map(str, pki.server("b.test", days=30).pair().values()))
    assert "expires on" in (expiry_warning(soon, NOW) or "")
    assert expiry_warning(later, NOW) is None
    assert "expired on" in (expiry_warning(soon, NOW + datetime.timedelta(days=4)) or "")


def config_file(tmp_path: Path, tls: dict[str, object], **extra: object) -> Path:
    config = {
        "pools": {"p": {"kind": "on-prem", "backends": [{"url": "http://127.0.0.1:9"}]}},
        "auth": {"default": "none"},
        "routes": [{"name": "r", "to": {"pools": ["p"]}}],
        "tls": tls,
        **extra,
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_check_refuses_a_bad_pair_with_its_line_and_warns_on_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    one, two = pki.server("a.test", days=5), pki.server("b.test")
    path = config_file(tmp_path, {"certificates": [{"cert": one.cert.name, "key": two.key.name}]})
    assert cli.check(str(path)) == 2
    err = capsys.readouterr().err
    assert "tls.certificates[0]: " in err and "the key does not match" in err and "(line" in err
    path = config_file(tmp_path, {"certificates": [one.pair()]})  # relative paths work too
    assert cli.check(str(path)) == 0
    captured = capsys.readouterr()
    assert "warning: tls.certificates[0].cert: " in captured.err and "expires on" in captured.err
    assert ": ok (" in captured.out


def test_config_shapes(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pair = pki.server("a.test").pair()
    with pytest.raises(ConfigError, match="client_cert needs client_ca"):
        load(config_file(tmp_path, {"certificates": [pair], "client_cert": "required"}))
    with pytest.raises(ConfigError, match="min_version"):
        load(config_file(tmp_path, {"certificates": [pair], "min_version": "1.1"}))
    routes = [{"name": "r", "to": {"pools": ["p"]}, "client_cert": "required"}]
    with pytest.raises(ConfigError, match=r"routes\[0\].client_cert: needs tls.client_ca"):
        load(config_file(tmp_path, {"certificates": [pair]}, routes=routes))
    loaded = load(config_file(tmp_path, {"certificates": [pair], "client_ca": "ca.pem"}))
    assert loaded.config.tls is not None and Path(loaded.config.tls.client_ca or "").is_absolute()


def test_sni_choice(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    first, second = pki.server("a.test"), pki.server("b.test", "*.w.test")
    config = load(config_file(tmp_path, {"certificates": [first.pair(), second.pair()]}))
    assert config.config.tls is not None
    contexts = build(config.config.tls)
    other = contexts.by_name["b.test"]
    assert contexts.select("B.TEST.") is other
    assert contexts.select("x.w.test") is other
    assert contexts.select("x.y.w.test") is contexts.default  # a wildcard is one label
    assert contexts.select(None) is contexts.select("nope.test") is contexts.default


def test_identity_fields_in_any_spelling_and_safe_values() -> None:
    for name in (b"x-client-cert-subject", b"x_client_cert_san", b"x-client_cert-san"):
        assert is_identity_field(name)
    assert not is_identity_field(b"x-client-cert")
    assert _field_value("CN=a\r\nX-Evil: 1") == b"CN=a\\x0d\\x0aX-Evil: 1"
    assert _field_value("CN=é") == "CN=é".encode()


async def test_the_access_log_says_the_tls_version() -> None:
    from mcp_proxy.logline import Facts, json_line, text_line
    from mcp_proxy.tls.session import TlsSession
    from tests.unit.test_accesslog import request

    req = request(b"/x")
    req.tls = TlsSession("TLSv1.3")
    facts = Facts(req, b"rid", 200)
    assert json.loads(json_line(facts, b"t", b"1"))["tls"] == "TLSv1.3"
    assert " tls=TLSv1.3 " in text_line(facts, b"t", b"1").decode()
    assert json.loads(json_line(Facts(request(b"/x"), b"r", 200), b"t", b"1"))["tls"] is None
