"""Settings: defaults, then a YAML/TOML config file, then environment variables.

Provider base URLs and keys come only from here, never from a request.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .catalog import Catalog, default_catalog
from .catalog.providers import PROVIDERS, default_providers, provider_wire
from .redact import register_secret


@dataclass(slots=True)
class ProviderConfig:
    """Where one provider lives and how to authenticate there (from the config file, never from a request)."""

    name: str
    base_url: str
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)  # resolved from api_key_env at start-up
    wire: str = "openai"
    headers: dict[str, str] = field(default_factory=dict)
    #: whether it may keep or train on prompts (the config's ``retains_data``; true unless said otherwise):
    #: ``provider.data_collection: "deny"`` routes only to endpoints whose provider says false
    retains_data: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResilienceSettings:
    retries: int = 2  # extra tries of the last remaining candidate on a retryable error
    backoff_base: float = 0.25  # seconds; full jitter: sleep U(0, base * 2**attempt), capped
    backoff_max: float = 4.0
    breaker_failures: int = 5  # failed requests in a row (a request and its retries: one) open a model's circuit
    breaker_cooldown: float = 30.0  # seconds an open circuit refuses before one probe is let through


@dataclass
class Timeouts:
    connect: float = 10.0
    first_byte: float = 120.0  # until the upstream's response headers (and, streaming, its first event)
    total: float = 600.0


@dataclass
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_messages: int = 2000
    max_json_depth: int = 64


@dataclass
class ImageFetch:
    """Remote images fetched for providers that take only inline ones (Gemini): ``gateway/images.py``."""

    max_bytes: int = 20 * 1024 * 1024  # all images of one request together (Gemini's inline request limit)
    timeout: float = 10.0  # seconds per image, redirects included
    allow_private: bool = False  # loopback/private/link-local hosts (tests; images on an internal host)


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("METAROUTER_HOME", "~/.metarouter")).expanduser())
    database_url: str | None = None
    redis_url: str | None = None
    admin_key: str | None = field(default=None, repr=False)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=default_catalog)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    image_fetch: ImageFetch = field(default_factory=ImageFetch)
    #: seconds to wait for the first upstream event before a stream commits to HTTP 200 and starts sending
    #: ``: OPENROUTER PROCESSING`` comments (errors before then still get their real status code)
    stream_commit_after: float = 0.5
    keepalive_interval: float = 5.0
    #: seconds a key record is cached per process (a disabled key stops working within this time)
    auth_cache_ttl: float = 5.0
    #: seconds a request may wait for a key's budget that holds of requests in flight take up (when the budget itself
    #: could pay for it) before it is refused with 402
    budget_wait: float = 10.0
    router: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'metarouter.db'}"

    def provider_available(self, name: str) -> bool:
        p = self.providers.get(name)
        return p is not None and (p.api_key is not None or not p.api_key_env)


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    data = yaml.safe_load(text)
    return data or {}


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false")
    return value


def _provider(name: str, spec: dict[str, Any], env: dict[str, str]) -> ProviderConfig:
    known = PROVIDERS.get(name)
    base = {"base_url": known.base_url, "api_key_env": known.key_env} if known is not None else {}
    merged = {**{k: v for k, v in base.items() if v is not None}, **(spec or {})}
    if "base_url" not in merged:
        raise ValueError(f"provider {name!r} needs a base_url")
    key_env = merged.get("api_key_env")
    api_key = env.get(key_env) if key_env else None
    register_secret(api_key)  # never shown again, whatever an upstream echoes
    for header, value in (merged.get("headers") or {}).items():
        if any(w in str(header).lower() for w in ("auth", "key", "token", "secret")):
            register_secret(str(value))
    return ProviderConfig(
        name=name,
        base_url=str(merged["base_url"]).rstrip("/"),
        api_key_env=key_env,
        api_key=api_key,
        wire=merged.get("wire") or provider_wire(name),
        headers=dict(merged.get("headers") or {}),
        retains_data=_flag(merged.get("retains_data", True), f"providers.{name}.retains_data"),
        extra={k: v for k, v in merged.items()
               if k not in ("base_url", "api_key_env", "wire", "headers", "retains_data")},
    )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults, the config file at ``path`` (YAML or TOML), the environment and ``overrides``."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = _read_file(Path(path)) if path else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    s = Settings(raw=raw)
    if "METAROUTER_HOME" in env:
        s.data_dir = Path(env["METAROUTER_HOME"]).expanduser()
    conversions = {"host": str, "port": int, "database_url": str, "redis_url": str, "stream_commit_after": float,
                   "keepalive_interval": float, "auth_cache_ttl": float, "budget_wait": float}
    for key, conv in conversions.items():
        if raw.get(key) is not None:
            setattr(s, key, conv(raw[key]))
    if raw.get("data_dir"):
        s.data_dir = Path(str(raw["data_dir"])).expanduser()
    s.database_url = env.get("METAROUTER_DATABASE_URL") or s.database_url
    s.redis_url = env.get("METAROUTER_REDIS_URL") or s.redis_url
    s.admin_key = env.get("METAROUTER_ADMIN_KEY") or None
    for key, cls in (("timeouts", Timeouts), ("limits", Limits), ("resilience", ResilienceSettings),
                     ("image_fetch", ImageFetch)):
        if isinstance(raw.get(key), dict):
            setattr(s, key, cls(**{**getattr(s, key).__dict__, **raw[key]}))
    specs: dict[str, Any] = {p.name: {} for p in default_providers()}
    specs.update(raw.get("providers") or {})
    s.providers = {name: _provider(name, spec or {}, env) for name, spec in specs.items() if spec is not False}
    disabled = [name for name, spec in specs.items() if spec is False]
    models = raw.get("models") or {}
    if isinstance(models, dict):
        overrides_m = {k: v for k, v in models.items() if k not in ("remove", "add")}
        overrides_m.update(models.get("add") or {})
        s.catalog = s.catalog.with_overrides(overrides_m, remove=models.get("remove") or ())
    if disabled:
        s.catalog = s.catalog.without_providers(disabled)
    unknown = sorted(s.catalog.providers() - set(s.providers))
    if unknown:
        raise ValueError(f"models refer to providers without configuration: {', '.join(unknown)}")
    s.router = dict(raw.get("router") or {})
    return s
