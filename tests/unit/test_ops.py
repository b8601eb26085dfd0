"""The operators' commands without Kafka: topics compared with their layouts, records shown
and filtered by account, lag counted, and the commands' settings checked before connecting."""

from __future__ import annotations

import doctest
import json
import re
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from agents.cli import main
from agents.notifier import Notifier
from ledger_stream import ops
from ledger_stream.errors import ConfigurationError
from ledger_stream.ops import (
    TOPIC_NAMES,
    ConsumerGroup,
    PartitionLag,
    Shown,
    TopicCheck,
    TopicFound,
    lag_dict,
    lag_text,
    ledger_groups,
    names_account,
    shown,
    tail_dict,
    tail_line,
    topic_named,
    topics_dict,
    topics_text,
)
from ledger_stream.settings import Settings
from ledger_stream.topics import _raise_refusals, topic_layouts

JOURNAL = NewTopic(
    "l.journal", 4, 3, topic_configs={"cleanup.policy": "compact", "retention.ms": "-1"}
)


def found(partitions: int = 4, replication_factor: int = 3, **configs: str) -> TopicFound:
    reported = {"cleanup.policy": "compact", "retention.ms": "-1"}
    reported.update({name.replace("_", "."): value for name, value in configs.items()})
    return TopicFound("l.journal", partitions, replication_factor, reported)


# -- topics describe ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "differences"),
    [
        (found(), []),
        (None, ["l.journal: missing"]),
        (found(partitions=2), ["l.journal: partitions 2, expected 4"]),
        (found(replication_factor=1), ["l.journal: replication factor 1, expected 3"]),
        (found(cleanup_policy="delete"), ["l.journal: cleanup.policy delete, expected compact"]),
        (
            found(partitions=8, retention_ms="604800000"),
            [
                "l.journal: partitions 8, expected 4",
                "l.journal: retention.ms 604800000, expected -1",
            ],
        ),
    ],
)
def test_each_difference_from_the_layout_is_named(
    topic: TopicFound | None, differences: list[str]
) -> None:
    check = TopicCheck(JOURNAL, topic)
    assert check.differences == differences
    assert topics_dict([check])["ok"] is (not differences)


def test_a_config_the_broker_does_not_report_is_named_and_not_a_difference() -> None:
    check = TopicCheck(JOURNAL, TopicFound("l.journal", 4, 3, {"cleanup.policy": "compact"}))
    assert check.differences == []
    assert check.unreported == ["l.journal: retention.ms"]
    assert check.as_dict()["configs"] == {"cleanup.policy": "compact", "retention.ms": None}
    text = topics_text([check])
    assert "retention.ms" in text and "not reported by the broker" in text
    assert "all 1 topics as the ledger expects" in text


def test_text_marks_each_difference_and_lists_them_at_the_end() -> None:
    checks = [
        TopicCheck(JOURNAL, found(partitions=2, cleanup_policy="delete")),
        TopicCheck(NewTopic("l.flags", 4, 3, topic_configs={}), None),
    ]
    lines = topics_text(checks).splitlines()
    assert lines[0].split() == ["topic", "setting", "broker", "expected"]
    assert lines[1].split() == ["l.journal", "partitions", "2", "4", "DIFFERS"]
    assert lines[2].split() == ["replication", "factor", "3", "3"]
    assert lines[3].split() == ["cleanup.policy", "delete", "compact", "DIFFERS"]
    assert lines[5].split() == ["l.flags", "missing", "DIFFERS"]
    assert lines[6:] == [
        "3 difference(s) from the ledger's layouts:",
        "  l.journal: partitions 2, expected 4",
        "  l.journal: cleanup.policy delete, expected compact",
        "  l.flags: missing",
    ]


def test_json_says_what_the_broker_reports_and_what_is_expected() -> None:
    report = topics_dict([TopicCheck(JOURNAL, found(partitions=2))])
    assert report["ok"] is False
    assert report["differences"] == ["l.journal: partitions 2, expected 4"]
    (topic,) = report["topics"]
    assert topic == {
        "topic": "l.journal",
        "exists": True,
        "partitions": 2,
        "replication_factor": 3,
        "configs": {"cleanup.policy": "compact", "retention.ms": "-1"},
        "expected": {
            "partitions": 4,
            "replication_factor": 3,
            "configs": {"cleanup.policy": "compact", "retention.ms": "-1"},
        },
        "differences": ["l.journal: partitions 2, expected 4"],
        "unreported": [],
    }
    json.dumps(report)  # serializable as it is


def test_topics_as_the_layouts_make_them_all_match() -> None:
    layouts = topic_layouts(Settings(partitions=6, replication_factor=3))
    checks = [
        TopicCheck(
            t, TopicFound(t.name, t.num_partitions, t.replication_factor, dict(t.topic_configs))
        )
        for t in layouts
    ]
    assert topics_dict(checks) == {
        "ok": True,
        "differences": [],
        "unreported": [],
        "topics": [check.as_dict() for check in checks],
    }


# -- tail -------------------------------------------------------------------------------------


def record(
    value: bytes | None,
    key: bytes | None = b"alice",
    headers: tuple[tuple[str, bytes], ...] = (),
    timestamp_ms: int = 1_795_780_800_123,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="l.journal",
        partition=3,
        offset=1204,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=list(headers),
    )


def item(value: Any, key: str | None = "k") -> Shown:
    return Shown("l.t", 0, 0, 0, key, value, None, {})


def test_topic_short_names_are_the_ledgers_topics() -> None:
    settings = Settings(topic_prefix="x.")
    assert topic_named(settings, "journal") == "x.journal"
    assert topic_named(settings, "undelivered") == "x.notifications.undelivered"
    with pytest.raises(ConfigurationError, match="one of: commands, legs, journal"):
        topic_named(settings, "ledger.journal")


def test_tail_help_lists_every_topic_short_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tail", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"short name of a ledger topic: ([a-z, ]+?) options:", help_text)
    assert listed is not None, help_text
    assert sorted(listed.group(1).split(", ")) == sorted(TOPIC_NAMES)


def test_a_json_value_is_shown_compacted_on_one_line() -> None:
    value = b'{\n  "entry_id": "c-1:0",\n  "account": "alice",\n  "amount": 1250\n}'
    line = tail_line(shown(record(value)))
    assert line == (
        "  3      1204  2026-11-27T12:00:00.123Z  alice  "
        '{"entry_id":"c-1:0","account":"alice","amount":1250}'
    )


def test_a_value_that_is_not_json_is_shown_as_text_with_its_headers() -> None:
    dead = shown(record(b"not json \xff", headers=(("error", b"item 0: bad"),)))
    assert dead.value is None and dead.text == "not json \\xff"
    assert tail_line(dead).endswith('not json \\xff  headers {"error":"item 0: bad"}')
    assert tail_dict(dead)["value_text"] == "not json \\xff"
    assert "value" not in tail_dict(dead)


def test_json_lines_carry_position_time_key_value_and_headers() -> None:
    assert tail_dict(shown(record(b'[{"account":"alice"}]', key=None))) == {
        "topic": "l.journal",
        "partition": 3,
        "offset": 1204,
        "timestamp_ms": 1_795_780_800_123,
        "time": "2026-11-27T12:00:00.123Z",
        "key": None,
        "value": [{"account": "alice"}],
        "headers": {},
    }


def test_a_record_without_value_or_time_is_still_shown() -> None:
    line = tail_line(shown(record(None, key=None, timestamp_ms=-1)))
    assert line.split() == ["3", "1204", "-", "-", "null"]


@pytest.mark.parametrize(
    ("value", "key", "names_bob"),
    [
        ({"account": "alice"}, "bob", True),  # the key: a command, a notification
        ({"type": "transfer", "account": "alice", "destination": "bob"}, "alice", True),
        ({"entry_id": "c:0", "account": "alice", "counterparty": "bob"}, "c:0", True),
        (
            [{"type": "credit", "source": "alice", "destination": "carol"}, {"source": "bob"}],
            "x",
            True,
        ),
        ({"invoice_id": "I", "payer": "bob", "payee": "shop"}, "I", True),
        ({"notification": {"account": "bob"}, "attempts": 8}, "n", True),  # undelivered
        ({"command_id": "bob", "account": "alice"}, "bob:0", False),
        ({"type": "reverse", "account": "alice", "target": "bob"}, "alice", False),
        ([{"account": "bobby"}], "alice", False),
        ("bob", "alice", False),
        (None, None, False),
    ],
)
def test_a_record_names_an_account_by_key_or_by_a_naming_field(
    value: Any, key: str | None, names_bob: bool
) -> None:
    assert names_account(item(value, key), "bob") is names_bob


# -- lag --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("committed", "start", "end", "lag"),
    [
        (10, 0, 10, 0),
        (7, 0, 10, 3),
        (None, 0, 10, 10),  # never committed: begins at the log start
        (None, 4, 10, 6),
        (2, 4, 10, 6),  # committed before the log start: begins at the log start
        (12, 0, 10, 0),
    ],
)
def test_lag_is_what_lies_between_the_groups_position_and_the_end(
    committed: int | None, start: int, end: int, lag: int
) -> None:
    assert PartitionLag("g", "t", 0, committed, start, end).lag == lag


def test_the_ledgers_groups_are_the_writers_and_the_notifiers() -> None:
    settings = Settings(
        topic_prefix="x.", webhook_urls="http://127.0.0.1:1/hook", webhook_secret="s"
    )
    writers, notifier = ledger_groups(settings)
    assert writers == ConsumerGroup("x.writer", ("x.commands", "x.legs"), "the writers")
    assert notifier.group_id == Notifier(settings).group_id
    assert notifier.topics == ("x.notifications",)


def test_lag_sums_per_group_and_says_when_a_group_never_ran() -> None:
    groups = [
        ConsumerGroup("x.writer", ("x.commands",), "the writers"),
        ConsumerGroup("x.notifier", ("x.notifications",), "the notifier"),
    ]
    lags = [
        PartitionLag("x.writer", "x.commands", 0, 5, 0, 5),
        PartitionLag("x.writer", "x.commands", 1, 3, 0, 7),
        PartitionLag("x.notifier", "x.notifications", 0, None, 0, 9),
    ]
    report = lag_dict(groups, lags)
    assert [(g["group"], g["lag"], g["committed_any"]) for g in report["groups"]] == [
        ("x.writer", 4, True),
        ("x.notifier", 9, False),
    ]
    assert report["groups"][0]["partitions"][1] == {
        "topic": "x.commands",
        "partition": 1,
        "committed": 3,
        "end": 7,
        "lag": 4,
    }
    lines = lag_text(groups, lags).splitlines()
    assert lines[0].split() == ["group", "topic", "partition", "committed", "end", "lag"]
    assert lines[3].split() == ["x.notifier", "x.notifications", "0", "-", "9", "9"]
    assert lines[4:] == [
        "x.writer (the writers): 4 records behind",
        "x.notifier (the notifier): 9 records behind; no offset committed: it has never run",
    ]


# -- the commands' settings, checked before any connection ------------------------------------

COMMANDS = [["topics", "create"], ["topics", "describe"], ["tail", "journal"], ["lag"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_bootstrap_flag_is_named(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--bootstrap", "no-port-here"]) == 2
    assert "LEDGER_BOOTSTRAP_SERVERS" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_topic_prefix_flag_is_named(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--topic-prefix", "no spaces/please"]) == 2
    assert "LEDGER_TOPIC_PREFIX" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"LEDGER_CONNECT_ATTEMPTS_MAX": "0"}, "LEDGER_CONNECT_ATTEMPTS_MAX"),
        ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "LEDGER_KAFKA_SASL_MECHANISM"),
        (
            {"LEDGER_KAFKA_SECURITY_PROTOCOL": "SSL", "LEDGER_KAFKA_SSL_CAFILE": "/no/such.pem"},
            "LEDGER_KAFKA_SSL_CAFILE",
        ),
    ],
)
def test_a_bad_setting_from_the_environment_is_named(
    command: list[str],
    environment: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(command) == 2
    assert named in capsys.readouterr().err


def test_tail_of_an_unknown_topic_names_the_topics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "ledger.journal", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "one of: commands, legs, journal" in capsys.readouterr().err


def test_tail_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["tail", "journal", "--limit", "0"])
    assert exit_.value.code == 2
    assert "expected 1 or more" in capsys.readouterr().err


def test_the_docstring_examples_hold() -> None:
    failed, attempted = doctest.testmod(ops)
    assert attempted > 0 and failed == 0


def test_min_insync_replicas_is_set_on_every_topic_when_given_and_never_above_the_replicas() -> (
    None
):
    given = topic_layouts(Settings(_env_file=None, replication_factor=3, min_insync_replicas=2))
    assert {t.topic_configs.get("min.insync.replicas") for t in given} == {"2"}
    unset = topic_layouts(Settings(_env_file=None, replication_factor=3))
    assert all("min.insync.replicas" not in t.topic_configs for t in unset)
    with pytest.raises(ValidationError, match=r"LEDGER_MIN_INSYNC_REPLICAS .* LEDGER_REPLICATION"):
        Settings(_env_file=None, replication_factor=1, min_insync_replicas=2)


def test_a_topic_the_broker_refused_to_create_stops_topic_creation_naming_the_settings() -> None:
    """CreateTopics answers per topic; only a topic created meanwhile by another worker
    (TopicAlreadyExists, 36) is not a refusal. The embedded broker refuses none, so this is
    the answer Apache Kafka gives a replication factor above its brokers."""
    _raise_refusals([("l.commands", 0, None), ("l.legs", 36, "already exists")])
    refused = [("l.commands", 0, None), ("l.journal", 38, "Replication factor: 3 larger than 1")]
    with pytest.raises(ConfigurationError) as raised:
        _raise_refusals(refused)
    message = str(raised.value)
    assert "l.journal: InvalidReplicationFactorError (Replication factor: 3" in message
    assert "l.commands" not in message and "LEDGER_REPLICATION_FACTOR" in message
