"""The config: YAML text -> a validated, frozen `Config`, or every problem with its key path.

- `model.py`: the typed, frozen shape; field by field checks (pydantic).
- `check.py`: checks of meaning across sections (unknown pools, unreachable routes, ...).
- `load.py`: YAML with line numbers, pydantic errors as readable lines.
- `keyfiles.py`: the files the config names (`jwks_file`) exist, parse and fit their issuer.
- `tlsfiles.py`: each pool's TLS files load (`pools.<name>.tls`), enter the config's version,
  and near-expiry warnings for `check`.
- `units.py`: durations and sizes (`1h30m`, `64KiB`), shared with the command line.
- `environ.py`: what `run` would refuse about the environment (`secret_env`); `check` prints it.

`load(path)` is what `mcp-proxy run` / `check` and a reload call; it raises `ConfigError`
whose `problems` are one line each, e.g.
`pools.dc1.backends[0].url: 'ftp://x': the scheme must be http or https (line 12)`.
"""

from __future__ import annotations

from mcp_proxy.config.load import ConfigError, LoadedConfig, load, parse, resolve_path
from mcp_proxy.config.model import Config

__all__ = ["Config", "ConfigError", "LoadedConfig", "load", "parse", "resolve_path"]
