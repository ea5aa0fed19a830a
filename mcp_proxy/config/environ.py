"""What `run` will refuse about the environment a config names: its `secret_env` variables.

The file can be right while the process environment is not: `run` cannot start an issuer whose
HMAC secret variable is unset, empty, or shorter than its algorithm needs (auth.keys decides,
and is asked here, so `check` and `run` cannot disagree). `check` often runs where the secret
is legitimately absent (CI, a laptop), so an unset variable is a warning; a variable that is
set but empty or too short is a problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_proxy.config.check import Problem
from mcp_proxy.config.model import Config, IssuerConfig


@dataclass(frozen=True, slots=True)
class Findings:
    warnings: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def secret_env_findings(config: Config, environ: Mapping[str, str] | None = None) -> Findings:
    """Warnings (a variable unset) and problems (set but unusable) for every `secret_env`."""
    env = os.environ if environ is None else environ
    findings = Findings()
    for index, issuer in enumerate(config.auth.issuers):
        if issuer.secret_env is None:
            continue
        path = ("auth", "issuers", index, "secret_env")
        value = env.get(issuer.secret_env)
        if value is None:
            message = (
                f"environment variable {issuer.secret_env} is not set here; "
                "run refuses to start unless it is"
            )
            findings.warnings.append(Problem(path, message))
        elif (problem := _secret_problem(issuer, value)) is not None:
            findings.problems.append(Problem(path, problem))
    return findings


def _secret_problem(issuer: IssuerConfig, value: str) -> str | None:
    # Imported here: config is imported by auth, and must not need auth to be imported.
    from mcp_proxy.auth.keys import KeySourceError, hmac_key

    name = issuer.secret_env or ""
    if not value:
        return f"environment variable {name} is empty"
    try:
        for algorithm in issuer.algorithms:
            hmac_key(os.fsencode(value), algorithm, name)
    except KeySourceError as exc:
        return str(exc)
    return None
