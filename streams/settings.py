"""Runtime settings from flags or `LEADFLOW_*` environment variables (pydantic-settings).

Secrets (the API tokens, SASL password) come only from the environment and are never printed:
they are `SecretStr`, so a logged settings object shows `**********`.

May import (one arrow each, `tests/unit/test_layers.py`): `streams.kafka.topics` (the topic
names), `streams.web.access` (tokens), `streams.kafka.keys` (master keys) and, lazily,
`streams.kafka.client_internals` (client options forbid topic auto-creation first).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.kafka.topics import TopicNames
from streams.web.access import Tokens


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_", extra="ignore")

    broker: str = Field(default="kafka://localhost:9092", description="kafka://host:port[,…]")
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1)
    replication: int = Field(default=1, ge=1)
    policy: Path | None = Field(default=None, description="policy YAML; default preset if unset")
    preset: str | None = None
    data_dir: Path = Path("./data")
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    canonical_url: str | None = Field(
        default=None,
        description="URL other workers reach this one at (routing); http://<hostname>:<port>",
    )
    api_token: SecretStr | None = Field(
        default=None, description="one plaintext token with every scope (the older setting)"
    )
    api_tokens: SecretStr | None = Field(
        default=None,
        description="named tokens as hashes: name:scope,scope:sha256-hex, ';' between them "
        "(streams.web.access)",
    )
    api_tokens_file: Path | None = Field(
        default=None, description="a file of such token lines, one a line (a mounted secret)"
    )
    access_log: Path | None = Field(
        default=None,
        description="file for the access log of personal-data reads (JSON lines); without "
        "it the lines go to the `leadflow.access` logger",
    )
    master_key: SecretStr | None = Field(
        default=None, description="kid:base64[,kid:base64…]: wraps per-person data keys"
    )
    master_key_file: Path | None = Field(default=None, description="file of kid:base64 lines")
    session_timeout: float = Field(default=10.0, description="consumer group session, seconds")
    sweep_interval: float = Field(default=60.0, gt=0, description="sweeper period, seconds")
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=1500,
        description="longest a fetch may wait for data (Faust fixes 1,500 ms; brokers that "
        "hold a fetch that long, like Tansu, add it to every event's latency). Shorter costs "
        "idle CPU: measured 1.7, 4 and 6 % of a core for the idle worker at 100, 20 and 10 ms "
        "on Kafka (the broker about as much again)",
    )
    table_write_buffer_mb: int = Field(
        default=8,
        ge=1,
        le=256,
        description="RocksDB write buffer (memtable) of the person table, per owned partition, "
        "MB; at most 2 per partition. Faust's default is 64 MB, 3 of them, which held ~22 KB "
        "per person in memory in bench/stream.py; the states are a few hundred bytes each, and "
        "the worker keeps its hot persons in its own cache",
    )
    exactly_once: bool = False
    idempotent_producer: bool = Field(
        default=True,
        description="an idempotent producer where the broker supports one (Kafka; not "
        "Tansu): a produce retry after a broker failure never writes a record twice",
    )
    shadow: list[str] = Field(
        default_factory=list, description="candidate policies (files or presets) run in shadow"
    )
    store: Literal["rocksdb", "memory"] = "rocksdb"
    # Security, passed through to aiokafka / Faust.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    def master_keys(self) -> Any:
        """The master keys (`streams.kafka.keys.MasterKeys`), or None if none is configured."""
        from streams.kafka.keys import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKeys

        env = {}
        if self.master_key is not None:
            env[MASTER_KEY_ENV] = self.master_key.get_secret_value()
        if self.master_key_file is not None:
            env[MASTER_KEY_FILE_ENV] = str(self.master_key_file)
        return MasterKeys.from_env(env)

    @property
    def topics(self) -> TopicNames:
        return TopicNames.prefixed(self.topic_prefix)

    @property
    def bootstrap(self) -> str:
        """`host:port,…` for aiokafka, from the `kafka://` URL Faust takes."""
        return ",".join(
            part.removeprefix("kafka://").strip() for part in self.broker.split(",") if part
        )

    def tokens(self) -> Tokens:
        """The API tokens this worker accepts. Raises TokenConfigError naming the bad line."""
        return Tokens.configured(
            tokens=self.api_tokens.get_secret_value() if self.api_tokens else None,
            tokens_file=self.api_tokens_file,
            legacy_token=self.api_token.get_secret_value() if self.api_token else None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        return ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection settings for any aiokafka client (producer, consumer, admin).

        Every client of ours is configured here, so this is where the process first forbids
        topic auto-creation (`streams.kafka.client_internals.forbid_auto_creation`): imported
        here rather than by the CLI at start, a command that never talks to a broker (replay
        on a file) loads no aiokafka, and one that reads a topic no Faust (issue 13)."""
        from streams.kafka.client_internals import forbid_auto_creation

        forbid_auto_creation()
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs
