"""Before a worker or a command uses the broker: one connection, and one line if it fails.

aiokafka retries a failed bootstrap and then reports only "Unable to bootstrap from …"
(the reason — a refused password, an untrusted certificate — goes to its log), and a TLS
client talking to a PLAINTEXT port waits for a handshake that never comes. So every runtime
entry point first opens one connection to each bootstrap address with the settings' security
(`LEADFLOW_SECURITY_PROTOCOL`, `LEADFLOW_SASL_*`, `LEADFLOW_SSL_CAFILE`), within `timeout`
seconds, and turns what went wrong into `BrokerAccessError`: one line naming the problem and
the setting to change.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from streams.settings import Settings

#: Seconds a connection (TCP, TLS handshake, SASL exchange, ApiVersions) may take.
TIMEOUT = 10.0


class BrokerAccessError(ConnectionError):
    """The broker cannot be used with these settings; `str()` is one line saying why."""


def _address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.strip().rpartition(":")
    if not host or not port.isdigit():
        raise BrokerAccessError(f"broker address {bootstrap!r}: expected host:port")
    return host.strip("[]"), int(port)


async def check_broker(settings: Settings, timeout: float = TIMEOUT) -> None:
    """Connect once to the first bootstrap address that answers; raise BrokerAccessError
    naming the problem when none does."""
    problems = []
    for server in [s for s in settings.bootstrap.split(",") if s.strip()]:
        try:
            await _connect(settings, *_address(server), timeout)
            return
        except BrokerAccessError as problem:
            if len(problems) == 0 and _final(problem):
                raise
            problems.append(str(problem))
    raise BrokerAccessError("; ".join(problems) or "no broker address given (LEADFLOW_BROKER)")


def _final(problem: BrokerAccessError) -> bool:
    """Credentials and certificates are the same for every address: no point trying more."""
    return getattr(problem, "final", False)


def _refused(message: str, *, final: bool = True) -> BrokerAccessError:
    error = BrokerAccessError(message)
    error.final = final  # type: ignore[attr-defined]
    return error


async def _connect(settings: Settings, host: str, port: int, timeout: float) -> None:
    options = settings.aiokafka_kwargs()
    options.pop("bootstrap_servers")
    where = f"{host}:{port}"
    protocol = settings.security_protocol
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                client_id="leadflow-preflight",
                request_timeout_ms=int(timeout * 1000),
                **options,
            ),
            timeout,
        )
    except ssl.SSLCertVerificationError as error:
        ca = settings.ssl_cafile or "the system's CA bundle"
        raise _refused(
            f"{where}: the broker's TLS certificate is not trusted by {ca} "
            f"({error.verify_message}): set LEADFLOW_SSL_CAFILE to the CA that signed it"
        ) from None
    except ssl.SSLError as error:
        raise _refused(
            f"{where}: TLS handshake failed ({error.reason or error}): is it a {protocol} listener?"
        ) from None
    except SaslAuthenticationFailed:
        raise _refused(
            f"{where}: SASL {settings.sasl_mechanism} authentication failed for user "
            f"{settings.sasl_username!r}: check LEADFLOW_SASL_USERNAME and "
            "LEADFLOW_SASL_PASSWORD"
        ) from None
    except UnsupportedSaslMechanismError as error:
        raise _refused(
            f"{where}: the broker does not offer SASL {settings.sasl_mechanism} ({error}): "
            "set LEADFLOW_SASL_MECHANISM to one it enables"
        ) from None
    except TimeoutError:
        raise _refused(
            f"{where}: no answer within {timeout:g} s with security protocol {protocol}: is "
            "that the listener's protocol (LEADFLOW_SECURITY_PROTOCOL)?",
            final=False,
        ) from None
    except (OSError, KafkaError) as error:
        text = str(error) or type(error).__name__
        if "authentication" in text.lower():  # older brokers answer with an UnknownError
            raise _refused(
                f"{where}: SASL authentication failed for user {settings.sasl_username!r} "
                f"({text}): check LEADFLOW_SASL_USERNAME and LEADFLOW_SASL_PASSWORD"
            ) from None
        nothing_there = isinstance(error, ConnectionRefusedError) or "Connect call failed" in text
        if nothing_there:
            hint = " (is the broker running, and is that its address?)"
        elif protocol == "PLAINTEXT":  # a TLS listener drops a plaintext request
            hint = " (a secured listener? set LEADFLOW_SECURITY_PROTOCOL)"
        else:
            hint = ""
        raise _refused(f"{where}: cannot connect: {text}{hint}", final=False) from None
    conn.close()
