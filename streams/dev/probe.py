"""Just enough of the Kafka wire protocol for a readiness probe (ApiVersions + Metadata over a
blocking socket, no event loop), so a broker's `start()` works the same from sync code,
pytest fixtures and coroutines."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


# --- minimal Kafka wire protocol, just enough for a readiness probe -----------------------

_API_VERSIONS = 18
_METADATA = 3
#: Metadata v4: Kafka 4 removed v0-v3 (KIP-896); Tansu answers v4 too.
_METADATA_VERSION = 4


def _request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"leadflow-broker-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _roundtrip(sock: socket.socket, api_key: int, version: int, cid: int, body: bytes) -> bytes:
    sock.sendall(_request(api_key, version, cid, body))
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (got_cid,) = struct.unpack_from(">i", resp, 0)
    if got_cid != cid:
        raise ConnectionError(f"correlation id mismatch: sent {cid}, got {got_cid}")
    return resp[4:]


def kafka_ping(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Send ApiVersions v0 and Metadata v4 and return the advertised ``(node, host, port)``s.

    Blocking and loop-free on purpose: usable from sync code and from inside a running event
    loop. Raises ``OSError``/``ConnectionError`` when the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _roundtrip(sock, _API_VERSIONS, 0, 1, b"")
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        # Metadata v4: topics = [] (none; we only want the broker list), no auto-creation.
        body = _roundtrip(sock, _METADATA, _METADATA_VERSION, 2, struct.pack(">ib", 0, 0))
        (n_brokers,) = struct.unpack_from(">i", body, 4)  # after throttle_time_ms
        pos = 8
        brokers: list[tuple[int, str, int]] = []
        for _ in range(n_brokers):
            node_id, host_len = struct.unpack_from(">ih", body, pos)
            pos += 6
            b_host = body[pos : pos + host_len].decode()
            pos += host_len
            (b_port, rack_len) = struct.unpack_from(">ih", body, pos)
            pos += 6 + max(rack_len, 0)
            brokers.append((node_id, b_host, b_port))
        if not brokers:
            raise ConnectionError("metadata response lists no brokers")
        return brokers
