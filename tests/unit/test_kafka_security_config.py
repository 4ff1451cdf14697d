"""The launcher's optional SASL_SSL setup: the PLAINTEXT default is unchanged, and a secured
broker gets a SASL_SSL client listener, SCRAM at format time and a PEM keystore."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.dev.kafka_dist import KafkaSecurity, KafkaUnavailable, server_properties

LOG = Path("/data/log")


def test_without_security_the_broker_listens_plaintext_as_before():
    text = server_properties("127.0.0.1", 9092, 9093, LOG)
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n" in text
    assert "inter.broker.listener.name=PLAINTEXT\n" in text
    assert "SASL" not in text and "ssl." not in text


def test_with_security_clients_get_sasl_ssl_and_the_broker_a_loopback_listener():
    security = KafkaSecurity(Path("/tls/broker.pem"), {"app": "pw"})
    text = server_properties("127.0.0.1", 9092, 9093, LOG, security=security, internal_port=9094)
    assert "advertised.listeners=SASL_SSL://127.0.0.1:9092,INTERNAL://127.0.0.1:9094\n" in text
    assert "inter.broker.listener.name=INTERNAL\n" in text
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512\n" in text
    assert "ssl.keystore.type=PEM\nssl.keystore.location=/tls/broker.pem\n" in text
    assert "pw" not in text  # the password only goes to the storage format
    assert security.scram_arguments() == ["--add-scram", "SCRAM-SHA-512=[name=app,password=pw]"]


def test_a_scram_password_that_would_break_the_format_argument_is_refused():
    with pytest.raises(KafkaUnavailable, match="avoid"):
        KafkaSecurity(Path("/k.pem"), {"app": "a,b"}).scram_arguments()
