"""How the services reach a Kafka that wants TLS and SCRAM (Strimzi's default listener)."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import faust
from pydantic import SecretStr

from shared.kafka import connection_args, stream_credentials
from shared.settings import KafkaSettings


def test_plaintext_needs_nothing_but_the_brokers() -> None:
    settings = KafkaSettings(bootstrap_servers="kafka:9092")

    assert connection_args(settings) == {
        "bootstrap_servers": "kafka:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert stream_credentials(settings) is None


def test_scram_over_tls_logs_in_and_verifies_the_brokers_with_the_given_ca() -> None:
    settings = KafkaSettings(
        bootstrap_servers="switchboard-kafka-bootstrap:9093",
        security_protocol="SASL_SSL",
        sasl_username="switchboard-ingest",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=Path(certifi.where()),
    )

    args = connection_args(settings)
    credentials = stream_credentials(settings)

    assert args["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (args["sasl_plain_username"], args["sasl_plain_password"]) == (
        "switchboard-ingest",
        "s3cret",
    )
    assert isinstance(args["ssl_context"], ssl.SSLContext)
    assert args["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert args["ssl_context"].check_hostname
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(credentials)
