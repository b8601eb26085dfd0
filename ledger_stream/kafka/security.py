"""How the ledger's Kafka clients connect: the security keyword arguments every aiokafka
producer, consumer and admin client gets (`connection_options`), from the settings, and
the TLS context, whose files name their LEDGER_* variable when they do not load.

    AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                     **connection_options(settings))
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.helpers import create_ssl_context

from ledger_stream.errors import ConfigurationError

if TYPE_CHECKING:
    from ledger_stream.settings import Settings

SSL_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def connection_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of every Kafka client the ledger makes, beside its own: the
    protocol, TLS context and SASL credentials of `LEDGER_KAFKA_*`. PLAINTEXT (the default)
    adds nothing aiokafka would not do anyway."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in SSL_PROTOCOLS:
        password = settings.kafka_ssl_key_password
        options["ssl_context"] = ssl_context(
            settings.kafka_ssl_cafile,
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile,
            None if password is None else password.get_secret_value() or None,
        )
    if protocol in SASL_PROTOCOLS:
        # Settings refuse SASL without all three; aiokafka names the SCRAM credentials
        # `sasl_plain_*` too.
        assert settings.kafka_sasl_mechanism is not None
        assert settings.kafka_sasl_username and settings.kafka_sasl_password is not None
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def ssl_context(
    cafile: Path | None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client TLS context as aiokafka's `create_ssl_context` makes it (brokers' names
    checked, their certificates verified against `cafile` or the system's CAs), with the
    client certificate loaded. A file that does not load raises `ConfigurationError` naming
    its LEDGER_* variable."""
    try:
        context = create_ssl_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"LEDGER_KAFKA_SSL_CAFILE: {str(cafile)!r} does not load as PEM CA certificates "
            f"({_reason(error)})"
        ) from error
    if certfile is None:
        return context
    _check_certificate(certfile)
    try:
        context.load_cert_chain(certfile, keyfile, _password(key_password))
    except _KeyEncrypted:
        raise ConfigurationError(
            f"LEDGER_KAFKA_SSL_KEY_PASSWORD: the private key in "
            f"{str(keyfile or certfile)!r} is encrypted; set its password"
        ) from None
    except (OSError, ssl.SSLError) as error:
        if keyfile is None:
            raise ConfigurationError(
                f"LEDGER_KAFKA_SSL_CERTFILE: {str(certfile)!r} holds no private key of its "
                f"certificate that loads ({_reason(error)}): put the key there, or set "
                "LEDGER_KAFKA_SSL_KEYFILE (and LEDGER_KAFKA_SSL_KEY_PASSWORD for an encrypted one)"
            ) from error
        raise ConfigurationError(
            f"LEDGER_KAFKA_SSL_KEYFILE: {str(keyfile)!r} does not load as the private key of "
            f"the certificate in LEDGER_KAFKA_SSL_CERTFILE ({_reason(error)}; a key of another "
            "certificate, or an encrypted key with another LEDGER_KAFKA_SSL_KEY_PASSWORD)"
        ) from error
    return context


class _KeyEncrypted(Exception):
    """OpenSSL asked for the password of a key no password was given for."""


def _password(key_password: str | None) -> Any:
    """What `load_cert_chain` takes: the password, or a callable that refuses, so OpenSSL
    never prompts on the terminal for one."""
    if key_password is not None:
        return key_password

    def refuse() -> str:
        raise _KeyEncrypted

    return refuse


def _check_certificate(certfile: Path) -> None:
    """A certfile with no certificate in it is named as such (not as a key problem)."""
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_verify_locations(certfile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"LEDGER_KAFKA_SSL_CERTFILE: {str(certfile)!r} does not load as a PEM "
            f"certificate ({_reason(error)})"
        ) from error


def _reason(error: OSError | ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)
