"""The config as frozen, typed objects.

Shapes and value ranges are checked here, field by field, so pydantic reports every problem
at once with its key path. Checks that need the whole file (a route naming an unknown pool, a
selector that matches nothing, duplicate route names) live in `config.check`; file reads
(`jwks_file`) in `config.load`. Defaults are the values SPEC.md shows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from mcp_proxy.config.units import parse_duration, parse_size
from mcp_proxy.http1.path import UnsafePath, normalize_path


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
Size = Annotated[int, BeforeValidator(parse_size)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Labels = dict[Name, StrictStr]


def _parse_address(value: object) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    if not isinstance(value, str):
        raise ValueError("expected an address like 127.0.0.1:8080")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not host:port with a port from 0 to 65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


Address = Annotated[tuple[str, int], BeforeValidator(_parse_address)]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(Frozen):
    header_timeout: PositiveDuration = 10.0
    idle_timeout: PositiveDuration = 60.0
    max_header_bytes: Annotated[Size, Field(ge=1024)] = 64 * 1024
    max_headers: PositiveInt = 100
    max_body_bytes: Size = 1024**3
    body_timeout: PositiveDuration = 30.0  # most time between two reads of a request body
    send_timeout: PositiveDuration = 30.0  # most time response bytes may sit unread
    min_rate: Size = 256  # bytes/s a body or response must move, over 10s windows; 0: off
    lingering_time: Duration = 5.0  # how long to read and discard after an early answer
    request_buffer: Size = 64 * 1024  # bodies up to this are read whole before admission
    tunnel_idle_timeout: PositiveDuration = 3600.0  # a WebSocket tunnel with no byte either way
    max_tunnels: PositiveInt = 10000  # open WebSocket tunnels per worker; past it, 503


def _check_backend_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{url!r}: give scheme://host:port only (no path, query or user)")
    return url.rstrip("/")


BackendUrl = Annotated[StrictStr, AfterValidator(_check_backend_url)]


class BackendConfig(Frozen):
    url: BackendUrl
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    # At most this many requests to it at once; while full it is unavailable (tiers spill).
    max_inflight: PositiveInt | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


PoolKind = Literal["on-prem", "private", "public"]

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?")


def _host_name(value: str) -> str:
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name (the name the backends' certificate has)")
    return value


FilePath = Annotated[StrictStr, Field(min_length=1)]


class PoolTls(Frozen):
    """SPEC "TLS at both edges": how a pool's https backends are verified and who we are to
    them. The files are read (and re-read on every reload) by `upstream.tls`."""

    ca: FilePath | None = None  # PEM trust anchors; None: the system's
    cert: FilePath | None = None  # client certificate (mTLS to the backends), chain allowed
    key: FilePath | None = None
    # SNI and the name verified; default: each backend URL's host
    server_name: Annotated[StrictStr, AfterValidator(_host_name)] | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> PoolTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give cert and key together (the client certificate and its key)")
        return self


class PoolConfig(Frozen):
    kind: PoolKind
    labels: Labels = {}
    cost: NonNegativeFloat = 0.0
    backends: tuple[BackendConfig, ...] = ()  # may start empty only with `registration`
    registration: StrictBool = False  # backends may register at run time (admin PUT)
    tls: PoolTls | None = None  # for this pool's https backends

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Does this pool carry every label of a route's `selector`?"""
        return selector.items() <= self.labels.items()

    @model_validator(mode="after")
    def _unique_urls(self) -> PoolConfig:
        if not self.backends and not self.registration:
            raise ValueError("a pool needs at least one backend (or registration: true)")
        urls = [backend.url for backend in self.backends]
        if len(set(urls)) != len(urls):
            raise ValueError("a backend url appears twice in this pool")
        return self


class BalancerConfig(Frozen):
    policy: Literal["lowest_rtt", "round_robin", "least_request"] = "lowest_rtt"
    decay: PositiveDuration = 10.0
    cost_weight: NonNegativeFloat = 0.0
    # RTT assumed for a backend with no sample yet: never 0, so a new backend is probed.
    default_rtt: PositiveDuration = 0.030
    # Above this many candidates, pick between two random ones (P2C) instead of scanning all.
    p2c_threshold: PositiveInt = 16
    # Failover tiers (upstream/tiers.py): Envoy's overprovisioning factor, the slow-start window
    # (0: off) and what happens when no tier has an available backend.
    overprovisioning: Annotated[float, Field(ge=1.0, le=100.0, allow_inf_nan=False)] = 1.4
    slow_start: Duration = 0.0
    panic: Literal["fail", "all"] = "fail"


class OutlierConfig(Frozen):
    consecutive_failures: PositiveInt = 5
    ejection_time: PositiveDuration = 30.0
    max_ejected_percent: Annotated[StrictInt, Field(ge=0, le=100)] = 50


class HealthConfig(Frozen):
    path: Annotated[StrictStr, Field(pattern=r"^/[^\s]*$")] = "/healthz"
    interval: PositiveDuration = 3.0
    timeout: PositiveDuration = 1.0
    unhealthy_threshold: PositiveInt = 3
    healthy_threshold: PositiveInt = 2
    outlier: OutlierConfig = OutlierConfig()


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_jwks_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"{url!r}: jwks_url must be https (http only to a loopback address)")


class IssuerConfig(Frozen):
    issuer: Annotated[StrictStr, Field(min_length=1)]
    audiences: Annotated[tuple[Annotated[StrictStr, Field(min_length=1)], ...], Field(min_length=1)]
    algorithms: Annotated[tuple[Algorithm, ...], Field(min_length=1)]
    jwks_file: StrictStr | None = None
    jwks_url: Annotated[StrictStr, AfterValidator(_check_jwks_url)] | None = None
    secret_env: Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    jwks_max_age: PositiveDuration = 600.0
    jwks_cooldown: Duration = 30.0

    @model_validator(mode="after")
    def _one_key_source_matching_algorithms(self) -> IssuerConfig:
        sources = [self.jwks_file, self.jwks_url, self.secret_env]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one key source: jwks_file, jwks_url or secret_env")
        hmac = set(self.algorithms) & HMAC_ALGORITHMS
        if hmac and len(hmac) != len(self.algorithms):
            raise ValueError("one issuer never mixes HMAC (HS*) with RSA/EC algorithms")
        if self.secret_env is not None and not hmac:
            raise ValueError("secret_env goes with HS256/HS384/HS512 algorithms only")
        if self.secret_env is None and hmac:
            raise ValueError("HS* algorithms need secret_env (a JWKS holds public keys)")
        return self


class AuthConfig(Frozen):
    default: Literal["required", "none"] = "required"
    leeway: Duration = 30.0
    issuers: tuple[IssuerConfig, ...] = ()


class AdmissionConfig(Frozen):
    classes: Annotated[tuple[Name, ...], Field(min_length=1)] = (
        "critical",
        "high",
        "normal",
        "low",
    )
    max_inflight: PositiveInt = 512
    max_queue: Annotated[StrictInt, Field(ge=0)] = 2048
    queue_timeout: PositiveDuration = 2.0
    claim: Name | None = "priority"
    default: Name = "normal"

    @model_validator(mode="after")
    def _default_is_a_class(self) -> AdmissionConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("a class appears twice in admission.classes")
        if self.default not in self.classes:
            raise ValueError(f"default {self.default!r} is not one of classes {list(self.classes)}")
        return self


HTTP_TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


Method = Annotated[StrictStr, Field(pattern=HTTP_TOKEN)]


def _normal_prefix(prefix: str) -> str:
    """Requests are matched on their normalised path (http1/path.py): a prefix that is not
    itself normal (`//`, `.` segments, `%2e`, lower-case or needless escapes) could never
    match, so it is refused with the spelling that would."""
    try:
        normal = normalize_path(prefix.encode("utf-8")).decode("ascii")
    except UnsafePath as unsafe:
        raise ValueError(f"{prefix!r} can never match a request: {unsafe}") from None
    if normal != prefix:
        raise ValueError(f"{prefix!r} can never match a normalised path; write {normal!r}")
    return prefix


class MatchConfig(Frozen):
    path_prefix: Annotated[StrictStr, Field(pattern=r"^/"), AfterValidator(_normal_prefix)] = "/"
    methods: Annotated[tuple[Method, ...], Field(min_length=1)] | None = None
    host: Annotated[StrictStr, Field(min_length=1)] | None = None
    headers: dict[Annotated[StrictStr, Field(pattern=HTTP_TOKEN)], StrictStr] = {}


class PoolSet(Frozen):
    """Pools named, or chosen by labels (a selector may also name `kind`): exactly one."""

    pools: Annotated[tuple[Name, ...], Field(min_length=1)] | None = None
    selector: Annotated[Labels, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PoolSet:
        if (self.pools is None) == (self.selector is None):
            raise ValueError("give exactly one of pools or selector")
        return self

    def pool_names(self, pools: Mapping[str, PoolConfig]) -> list[str]:
        """The set's pools, in config order for a selector."""
        if self.pools is not None:
            return list(self.pools)
        wanted = dict(self.selector or {})
        kind = wanted.pop("kind", None)
        return [
            name
            for name, pool in pools.items()
            if (kind is None or pool.kind == kind) and pool.matches(wanted)
        ]


class TierConfig(PoolSet):
    """One failover tier of `to.tiers`."""


class SplitSide(PoolSet):
    """One side of `to.split`: its pools and its share (weight / sum of weights)."""

    weight: Annotated[StrictInt, Field(ge=1, le=10_000)]


class Mirror(PoolSet):
    """`mirror`: copies of `percent` % of a route's requests to another pool set."""

    percent: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


class TargetConfig(Frozen):
    pools: Annotated[tuple[Name, ...], Field(min_length=1)] | None = None
    selector: Annotated[Labels, Field(min_length=1)] | None = None
    split: Annotated[tuple[SplitSide, ...], Field(min_length=2, max_length=16)] | None = None
    tiers: Annotated[tuple[TierConfig, ...], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetConfig:
        forms = (self.pools, self.selector, self.split, self.tiers)
        if sum(form is not None for form in forms) != 1:
            raise ValueError("give exactly one of pools, selector, split or tiers")
        return self


class ScopesConfig(Frozen):
    scopes: Annotated[tuple[Annotated[StrictStr, Field(min_length=1)], ...], Field(min_length=1)]


RouteAuth = Literal["none", "required"] | ScopesConfig


class RouteConfig(Frozen):
    name: Name
    match: MatchConfig = MatchConfig()
    to: TargetConfig
    auth: RouteAuth | None = None
    priority: Name | None = None
    timeout: PositiveDuration = 30.0
    retries: Annotated[StrictInt, Field(ge=0, le=10)] = 2
    mirror: Mirror | None = None
    # required: served only on a connection whose client certificate verified (tls.client_ca)
    client_cert: Literal["required"] | None = None


def _check_dns_server(value: str) -> str:
    """A name server as c-ares takes it: `10.0.0.10`, `10.0.0.10:5353`, `fd00::a`, `[fd00::a]:53`
    (an address: a name server found by name would need a name server first)."""
    host, port = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else "x" if rest else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address, IP:port or [IPv6]:port") from None
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: the port must be from 1 to 65535")
    return value


DnsServer = Annotated[StrictStr, AfterValidator(_check_dns_server)]


class UpstreamConfig(Frozen):
    """How the proxy talks to backends (an addition to SPEC.md's keys)."""

    connect_timeout: PositiveDuration = 2.0
    idle_timeout: PositiveDuration = 60.0  # a pooled connection unused this long is closed
    max_idle_per_backend: Annotated[StrictInt, Field(ge=0)] = 128
    dns_refresh: PositiveDuration = 30.0  # re-resolve host names at least this often
    dns_servers: tuple[DnsServer, ...] = ()  # name servers for backend names; (): the system's
    max_response_header_bytes: Annotated[Size, Field(ge=1024)] = 64 * 1024  # more -> 502
    read_timeout: PositiveDuration = 300.0  # most time between two reads of a response body


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR string like 10.0.0.0/8 or fd00::/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR (10.0.0.0/8, fd00::/8)") from None


Network = Annotated[IPNetwork, BeforeValidator(_parse_network)]


def is_trusted(peer_ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Is `peer_ip` (IPv4 or IPv6 text, as the socket gives it) inside one of `networks`?"""
    if not networks:
        return False  # the usual case costs no parse
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False  # not an IP peer (a Unix socket): never a trusted proxy
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


class AccessLogConfig(Frozen):
    """SPEC "Access log"; `access_log: true|false` is `{enabled: true|false}`."""

    enabled: StrictBool = True
    format: Literal["text", "json"] = "text"
    path: Annotated[StrictStr, Field(min_length=1)] = "-"  # "-" is stdout


def _access_log(value: object) -> object:
    return {"enabled": value} if isinstance(value, bool) else value


class CertificatePair(Frozen):
    """One certificate (PEM, the chain may follow the leaf) and its private key (PEM)."""

    cert: FilePath
    key: FilePath


class ListenerTls(Frozen):
    """SPEC "TLS at both edges": present, the public listener speaks TLS only."""

    certificates: Annotated[tuple[CertificatePair, ...], Field(min_length=1)]
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca: FilePath | None = None
    client_cert: Literal["optional", "required"] | None = None

    @model_validator(mode="after")
    def _client_cert_needs_a_ca(self) -> ListenerTls:
        if self.client_cert is not None and self.client_ca is None:
            raise ValueError("client_cert needs client_ca (the CA that verifies them)")
        return self


class AdminAuth(Frozen):
    """`admin_auth`: admin writes (POST/PUT/DELETE) need a token from auth.issuers with it."""

    scope: Annotated[StrictStr, Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
    # Host names a write may be addressed to besides loopback and the admin's own address
    # (say a Service name): a DNS-rebinding page's Host is none of them.
    hosts: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = ()


class Config(Frozen):
    listen: Address = ("127.0.0.1", 8080)
    admin: Address = ("127.0.0.1", 9901)
    limits: Limits = Limits()
    pools: Annotated[dict[Name, PoolConfig], Field(min_length=1)]
    balancer: BalancerConfig = BalancerConfig()
    health: HealthConfig = HealthConfig()
    auth: AuthConfig = AuthConfig()
    admission: AdmissionConfig = AdmissionConfig()
    routes: Annotated[tuple[RouteConfig, ...], Field(min_length=1)]
    upstream: UpstreamConfig = UpstreamConfig()
    drain_timeout: Duration = 20.0  # SIGTERM: how long in-flight requests may take to finish
    access_log: Annotated[AccessLogConfig, BeforeValidator(_access_log)] = AccessLogConfig()
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-* are kept
    headers_with_underscores: Literal["drop", "reject", "allow"] = "drop"
    admin_auth: AdminAuth | None = None
    workers: Annotated[StrictInt, Field(ge=1, le=256)] | Literal["auto"] = 1  # workers/
    tls: ListenerTls | None = None  # the public listener's; pools have their own

    def is_trusted(self, peer_ip: str) -> bool:
        """May this peer's X-Forwarded-* headers be kept? (See `is_trusted`.)"""
        return is_trusted(peer_ip, self.trusted_proxies)
