"""Security settings: Kafka connections (protocol, TLS files, SASL credentials) are checked
when the settings are read, each refusal naming its LEDGER_* variable; `connection_options`
gives every Kafka client the same arguments; API keys are stored hashed and a request's key
is checked against them; the client sends its key with its reads."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

import ledger_stream.client as client_module
from agents import cli
from agents.api import ApiKeys, Problem
from ledger_stream.client import LedgerClient
from ledger_stream.errors import BrokerUnavailable
from ledger_stream.kafka.security import connection_options
from ledger_stream.reads import HttpReads
from ledger_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789abcdefghijklmnopqrstuvwxyz"
SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "ledger-worker",
    "kafka_sasl_password": "s3cret",
}
# The recipe the README gives for a key and its hash.
HASH_RECIPE = (
    "import hashlib, secrets; key = secrets.token_urlsafe(32); "
    "print(key); print('sha256:' + hashlib.sha256(key.encode()).hexdigest())"
)


@pytest.fixture(autouse=True)
def no_ledger_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Settings read from the variables a test sets, not from this process's."""
    for name in [name for name in os.environ if name.startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and its key, another key, the key encrypted (password `secret`), and
    a file that is no certificate: made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    folder = tmp_path_factory.mktemp("pki")
    for name in ("client", "other"):
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"),
                *("-subj", f"/CN={name}", "-keyout", str(folder / f"{name}.key")),
                *("-out", str(folder / f"{name}.pem")),
            ],
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(folder / "client.key"), "-aes256"),
            *("-passout", "pass:secret", "-out", str(folder / "encrypted.key")),
        ],
        check=True,
        capture_output=True,
    )
    (folder / "junk.pem").write_text("not a certificate\n")
    names = ("client.pem", "client.key", "other.key", "encrypted.key", "junk.pem")
    return {name: folder / name for name in names}


def refusal(**fields: Any) -> str:
    """The message of the settings' refusal of `fields`."""
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, **fields)
    return str(refused.value)


# -- Kafka connections: what the settings refuse, each naming its variable ----------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "LEDGER_KAFKA_SASL_MECHANISM"),
        ({**SASL, "kafka_sasl_username": None}, "LEDGER_KAFKA_SASL_USERNAME"),
        ({**SASL, "kafka_sasl_password": None}, "LEDGER_KAFKA_SASL_PASSWORD"),
        ({**SASL, "kafka_sasl_password": ""}, "LEDGER_KAFKA_SASL_PASSWORD"),
        (
            {**SASL, "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": ""},
            "LEDGER_KAFKA_SASL_USERNAME",
        ),
        # Credentials a protocol without SASL would silently leave unused.
        ({"kafka_sasl_username": "ledger"}, "LEDGER_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"},
            "LEDGER_KAFKA_SASL_MECHANISM",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({**SASL, "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_sasl_settings_that_cannot_work_are_refused_naming_the_setting(
    fields: dict[str, Any], named: str
) -> None:
    assert named in refusal(**fields)


def test_sasl_without_credentials_names_each_missing_setting() -> None:
    message = refusal(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    assert "LEDGER_KAFKA_SASL_USERNAME" in message
    assert "LEDGER_KAFKA_SASL_PASSWORD" in message
    assert "LEDGER_KAFKA_SASL_MECHANISM" not in message


@pytest.mark.parametrize(
    ("protocol", "files", "named"),
    [
        ("SSL", {"kafka_ssl_cafile": "missing.pem"}, "LEDGER_KAFKA_SSL_CAFILE"),
        ("SSL", {"kafka_ssl_cafile": "junk.pem"}, "LEDGER_KAFKA_SSL_CAFILE"),
        ("SSL", {"kafka_ssl_cafile": "client.key"}, "LEDGER_KAFKA_SSL_CAFILE"),
        ("SASL_SSL", {"kafka_ssl_cafile": "junk.pem"}, "LEDGER_KAFKA_SSL_CAFILE"),
        (
            "SSL",
            {"kafka_ssl_certfile": "junk.pem", "kafka_ssl_keyfile": "client.key"},
            "LEDGER_KAFKA_SSL_CERTFILE",
        ),
        ("SSL", {"kafka_ssl_certfile": "client.pem"}, "LEDGER_KAFKA_SSL_CERTFILE"),  # no key
        (
            "SSL",
            {"kafka_ssl_certfile": "client.pem", "kafka_ssl_keyfile": "other.key"},
            "LEDGER_KAFKA_SSL_KEYFILE",
        ),
        (
            "SSL",
            {"kafka_ssl_certfile": "client.pem", "kafka_ssl_keyfile": "missing.key"},
            "LEDGER_KAFKA_SSL_KEYFILE",
        ),
        (
            "SSL",
            {"kafka_ssl_certfile": "client.pem", "kafka_ssl_keyfile": "encrypted.key"},
            "LEDGER_KAFKA_SSL_KEY_PASSWORD",
        ),
        (
            "SSL",
            {
                "kafka_ssl_certfile": "client.pem",
                "kafka_ssl_keyfile": "encrypted.key",
                "kafka_ssl_key_password": "wrong",
            },
            "LEDGER_KAFKA_SSL_KEYFILE",
        ),
        ("SSL", {"kafka_ssl_keyfile": "client.key"}, "LEDGER_KAFKA_SSL_CERTFILE"),
        # TLS files a protocol without TLS would silently leave unused.
        ("PLAINTEXT", {"kafka_ssl_cafile": "client.pem"}, "LEDGER_KAFKA_SSL_CAFILE"),
        ("SASL_PLAINTEXT", {"kafka_ssl_cafile": "client.pem"}, "LEDGER_KAFKA_SSL_CAFILE"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_bad_tls_setting_is_refused_naming_the_setting(
    pki: dict[str, Path], protocol: str, files: dict[str, str], named: str
) -> None:
    folder = pki["client.pem"].parent
    paths = {
        name: value if name.endswith("password") else str(folder / value)
        for name, value in files.items()
    }
    sasl = {**SASL, "kafka_security_protocol": protocol} if "SASL" in protocol else {}
    message = refusal(**{**sasl, "kafka_security_protocol": protocol, **paths})
    assert named in message


def test_the_worker_command_stops_on_a_bad_tls_file_naming_the_variable(
    no_ledger_environment: pytest.MonkeyPatch,
    pki: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    no_ledger_environment.setenv("LEDGER_KAFKA_SECURITY_PROTOCOL", "SSL")
    no_ledger_environment.setenv("LEDGER_KAFKA_SSL_CAFILE", str(pki["junk.pem"]))
    assert cli.main(["worker"]) == cli.EXIT_CONFIG
    assert "LEDGER_KAFKA_SSL_CAFILE" in capsys.readouterr().err


def test_security_settings_are_read_from_the_environment(
    no_ledger_environment: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    for name, value in {
        "LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "LEDGER_KAFKA_SASL_USERNAME": "ledger-worker",
        "LEDGER_KAFKA_SASL_PASSWORD": "s3cret",
        "LEDGER_KAFKA_SSL_CAFILE": str(pki["client.pem"]),
        "LEDGER_KAFKA_SSL_CERTFILE": str(pki["client.pem"]),
        "LEDGER_KAFKA_SSL_KEYFILE": str(pki["encrypted.key"]),
        "LEDGER_KAFKA_SSL_KEY_PASSWORD": "secret",
    }.items():
        no_ledger_environment.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert "s3cret" not in repr(settings) and "secret'" not in repr(settings)


# -- connection_options: what every Kafka client gets -----------------------------------------


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert connection_options(Settings(_env_file=None)) == {"security_protocol": "PLAINTEXT"}


def test_ssl_gives_a_context_that_verifies_the_broker_and_presents_the_certificate(
    pki: dict[str, Path],
) -> None:
    settings = Settings(
        _env_file=None,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki["client.pem"],
        kafka_ssl_certfile=pki["client.pem"],
        kafka_ssl_keyfile=pki["encrypted.key"],
        kafka_ssl_key_password="secret",
    )
    options = connection_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "client"),),)]


def test_ssl_without_a_ca_file_trusts_the_systems_cas() -> None:
    options = connection_options(Settings(_env_file=None, kafka_security_protocol="SSL"))
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_gives_the_mechanism_and_credentials_and_no_tls(mechanism: str) -> None:
    settings = Settings(
        _env_file=None, **{**SASL, "kafka_security_protocol": "SASL_PLAINTEXT"}
    ).model_copy(update={"kafka_sasl_mechanism": mechanism})
    assert connection_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "ledger-worker",
        "sasl_plain_password": "s3cret",
    }


def test_sasl_ssl_gives_credentials_and_a_tls_context() -> None:
    options = connection_options(Settings(_env_file=None, **SASL))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "ledger-worker",
        "s3cret",
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"kafka_security_protocol": "SSL"},
        SASL,
        {**SASL, "kafka_security_protocol": "SASL_PLAINTEXT"},
    ],
    ids=["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"],
)
async def test_every_aiokafka_client_takes_the_options(fields: dict[str, Any]) -> None:
    options = connection_options(Settings(_env_file=None, **fields))
    # aiokafka checks them when a client is made: an unknown protocol or mechanism, SSL
    # without a context, PLAIN without credentials are refused there.
    producer = AIOKafkaProducer(bootstrap_servers="localhost:1", **options)
    consumer = AIOKafkaConsumer(bootstrap_servers="localhost:1", **options)
    admin = AIOKafkaAdminClient(bootstrap_servers="localhost:1", **options)
    await producer.stop()
    await consumer.stop()
    await admin.close()


async def test_ledger_client_gives_its_kafka_clients_the_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []

    class Unreachable:
        def __init__(self, **options: Any) -> None:
            made.append(options)

        async def start(self) -> None:
            raise OSError("no broker here")

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(client_module, "AIOKafkaProducer", Unreachable)
    security = connection_options(
        Settings(_env_file=None, **{**SASL, "kafka_security_protocol": "SASL_PLAINTEXT"})
    )
    ledger = LedgerClient("localhost:1", connect_attempts_max=1, security=security)
    with pytest.raises(BrokerUnavailable):
        await ledger.start()
    assert made and made[0].items() >= security.items()


# Calls that make a Kafka client, and what carries the security options into them.
_KAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "reader"}
_KAFKA_READERS = {"read_topic", "read_journal", "LedgerClient"}


def _unsecured_calls(path: Path) -> list[str]:
    """Calls in `path` that make a Kafka client without the security options: no `security=`
    and no `**` of `connection_options(...)`, `security` or (`reader`'s pass-through)
    `options`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name not in _KAFKA_CLIENTS | _KAFKA_READERS:
            continue
        if not any(_carries_security(keyword) for keyword in node.keywords):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def _carries_security(keyword: ast.keyword) -> bool:
    if keyword.arg is not None:
        return keyword.arg == "security"
    spread = ast.unparse(keyword.value)
    return any(word in spread for word in ("connection_options(", "security", "options"))


def test_every_kafka_client_the_worker_makes_gets_the_security_options() -> None:
    unsecured = [
        call
        for package in ("ledger_stream", "agents")
        for path in sorted((ROOT / package).rglob("*.py"))
        for call in _unsecured_calls(path)
    ]
    assert unsecured == [], "Kafka clients made without connection_options(settings)"


# -- API keys -----------------------------------------------------------------------------------


def test_api_key_hashes_take_sha256_hashes_and_never_show_a_key_put_there() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    settings = Settings(_env_file=None, api_key_hashes=f"sha256:{digest}, sha256:{'A' * 64}")
    assert settings.api_key_digests == [bytes.fromhex(digest), bytes.fromhex("a" * 64)]
    message = refusal(api_key_hashes=f"sha256:{digest},{KEY}")
    assert "LEDGER_API_KEY_HASHES" in message and "entry 2" in message
    assert KEY not in message
    assert "LEDGER_API_KEY_HASHES" in refusal(api_key_hashes=f"sha512:{digest}")


def test_reads_cannot_require_a_key_no_one_has() -> None:
    message = refusal(api_reads_require_key=True)
    assert "LEDGER_API_READS_REQUIRE_KEY" in message and "LEDGER_API_KEY_HASHES" in message


def test_the_readme_recipe_makes_a_key_and_a_hash_the_worker_takes() -> None:
    made = subprocess.run(
        [sys.executable, "-c", HASH_RECIPE], check=True, capture_output=True, text=True
    )
    key, hashed = made.stdout.split()
    assert len(key) >= 43  # 32 random bytes
    keys = ApiKeys.from_settings(Settings(_env_file=None, api_key_hashes=hashed))
    keys.check(request_with({"Authorization": f"Bearer {key}"}))


def request_with(headers: dict[str, str]) -> web.Request:
    return make_mocked_request("POST", "/v1/deposits", headers=headers)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Authorization": f"Bearer {KEY}"}, None),
        ({"Authorization": f"bearer  {KEY} "}, None),
        ({"X-API-Key": KEY}, None),
        ({"Authorization": "Bearer another-key"}, "invalid_api_key"),
        ({"X-API-Key": KEY[:-1]}, "invalid_api_key"),
        ({"Authorization": f"Bearer {KEY.upper()}"}, "invalid_api_key"),
        ({}, "unauthorized"),
        ({"Authorization": "Bearer "}, "unauthorized"),
        ({"Authorization": f"Basic {KEY}"}, "unauthorized"),
        ({"Authorization": KEY}, "unauthorized"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_a_request_carries_one_of_the_keys_or_is_refused_401(
    headers: dict[str, str], code: str | None
) -> None:
    digests = [hashlib.sha256(b"another").digest(), hashlib.sha256(KEY.encode()).digest()]
    keys = ApiKeys(digests)
    if code is None:
        keys.check(request_with(headers))
        return
    with pytest.raises(Problem) as refused:
        keys.check(request_with(headers))
    assert (refused.value.status, refused.value.code) == (401, code)
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_no_keys_is_an_open_api() -> None:
    assert not ApiKeys.from_settings(Settings(_env_file=None))


async def test_http_reads_send_the_key_they_are_given() -> None:
    seen: list[str | None] = []

    async def account(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"account": request.match_info["account"]})

    app = web.Application()
    app.router.add_get("/v1/accounts/{account}", account)
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        for api_key in (KEY, None):
            reads = HttpReads(base, api_key=api_key)
            try:
                assert await reads.account("alice") == {"account": "alice"}
            finally:
                await reads.close()
    assert seen == [f"Bearer {KEY}", None]
