"""deploy/ and k8s/ stay true to the code.

The Kubernetes Deployments and the Procfile run the commands ``make run`` runs
(``services.local.stack.services_for``); every setting a manifest sets is one ``common.config`` reads;
alert rules and the Grafana dashboard use only metrics that exist (``common.metrics``, Dramatiq's
Prometheus middleware, ``up``); KEDA watches the queues the workers consume (``postroom worker
<stage>`` consumes ``<stage>_<lane>`` for every lane, narrowed by ``--lanes`` where a lane has its
own Deployment), and every queue has a worker, locally and in the cluster. Files are parsed,
nothing is deployed: no cluster, Docker or promtool is needed (where promtool is installed, it
also checks the alert rules and runs their unit tests, deploy/prometheus/alerts.test.yml).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import metrics
from common.broker import PLAN_LANES, lanes_of, queue_name
from common.config import ROOT, SETTINGS, Settings, load
from services.local.stack import Service, services_for
from services.worker import SENDER_STAGES, STAGE_MODULES

DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
BASE = K8S / "base"
SETTING_NAMES = {s.env for s in SETTINGS}
SECRET_SETTINGS = {"DATABASE_URL", "REDIS_URL", "TWILIO_AUTH_TOKEN", "POSTROOM_SECRET_KEY", "SMTP_PASSWORD",
                   "EMAIL_WEBHOOK_SECRET", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN",
                   "WAHA_API_KEY", "WAHA_WEBHOOK_SECRET"}
# Prefixes of postroom's own settings (a variable with one of them that is not a setting is a typo).
SETTING_PREFIXES = ("POSTROOM_", "TWILIO_", "SMTP_", "EMAIL_", "WHATSAPP_", "WAHA_")
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component")
# Options a Deployment may add to the local command line, with their value.
DEPLOYMENT_ONLY_OPTIONS = {"--bind"}  # gunicorn_conf binds POSTROOM_API_HOST; a pod binds 0.0.0.0
# Every worker Deployment and the stage it runs (`postroom worker <stage>`). SMS has a Deployment
# per lane (campaign backlogs share a provider account's rate), and so has the AI stage, one per
# plan (premium, pro, basic); the others serve every lane from one, each lane on its own threads or
# greenlets.
WORKER_DEPLOYMENTS = {"processing": "processing", "routing": "routing", "receipts": "receipts", "sender-sms-urgent": "sms", "sender-sms-normal": "sms",
                      "sender-sms-bulk": "sms", "sender-http": "http", "sender-email": "email",
                      "sender-whatsapp-cloud": "whatsapp_cloud", "sender-whatsapp-qr": "whatsapp_qr",
                      "webhooks": "webhooks", "sender-widget": "widget", "ai-premium": "ai", "ai-pro": "ai", "ai-basic": "ai"}


# -- helpers ------------------------------------------------------------------------------------
def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects(directory: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object in the YAML files of ``directory`` (kustomization files excluded)."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [doc for doc in yaml_docs(path) if kind is None or doc.get("kind") == kind]
    return found


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def base_config() -> dict[str, str]:
    """The postroom-config ConfigMap of the base: its configMapGenerator's env files and literals."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "postroom-config"]
    config: dict[str, str] = {}
    for name in generator.get("envs", []):
        config.update(env_file(BASE / name))
    for literal in generator.get("literals", []):
        name, _, value = literal.partition("=")
        config[name] = value
    return config


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in objects(BASE, "Deployment")}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The container named after its Deployment (others are sidecars)."""
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == deployment["metadata"]["name"]]
    return container


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def expand_kubernetes_refs(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values; unknown refs are an error."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined for the container"
        return env[match.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def normalized(argv: list[str]) -> list[str]:
    """An argv without where things are installed: the executable's name, paths relative to ROOT."""
    program = Path(argv[0]).name
    program = "python" if re.fullmatch(r"python[0-9.]*", program) else program
    return [program] + [arg.replace(f"{ROOT}/", "") for arg in argv[1:]]


def without_deployment_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in DEPLOYMENT_ONLY_OPTIONS:
            skip = True
        else:
            out.append(arg)
    return out


def deployed_services(cfg: Settings) -> list[Service]:
    return [s for s in services_for(cfg) if s.name != "sandbox"]


def is_worker(argv: list[str]) -> bool:
    return Path(argv[0]).name == "postroom" and argv[1:2] == ["worker"]


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` in an argv, or None."""
    return argv[argv.index(name) + 1] if name in argv else None


def without_option(argv: list[str], name: str) -> list[str]:
    if name not in argv:
        return argv
    i = argv.index(name)
    return argv[:i] + argv[i + 2:]


def worker_lanes(argv: list[str]) -> list[str]:
    """The lanes ``postroom worker <stage> [--lanes a,b]`` serves (every lane of its stage by default:
    urgent, normal and bulk; the AI stage's are the plans)."""
    lanes = option(argv, "--lanes")
    return [lane for lane in lanes.split(",") if lane] if lanes else list(lanes_of(argv[2]))


def consumed_queues(argv: list[str]) -> set[str]:
    """The queues a worker consumes: ``<stage>_<lane>`` for its lanes (and their delay queues),
    each of which the stage's actor module must declare."""
    stage = argv[2]
    queues = {queue_name(stage, lane) for lane in worker_lanes(argv)}
    declared = actor_queues(STAGE_MODULES[stage])
    assert queues <= declared, f"{argv}: {queues - declared} are not queues of {STAGE_MODULES[stage]}"
    return queues


def deployment_argv(deployment: dict[str, Any], config: dict[str, str]) -> list[str]:
    container = main_container(deployment)
    env = {**config, **container_env(container)}
    return [expand_kubernetes_refs(a, env) for a in container.get("command", []) + container.get("args", [])]


# -- Deployments run what `make run` runs -------------------------------------------------------
def test_every_service_but_the_sandbox_has_a_deployment_running_its_local_command():
    """A local worker serving several lanes may run as a Deployment per lane, ``<name>-<lane>``,
    whose command is the local one narrowed by ``--lanes <lane>``; together they serve every lane."""
    config = base_config()
    cfg = load(config)
    found = deployments()
    local = {s.name for s in deployed_services(cfg)}
    for service in deployed_services(cfg):
        if service.name in found:
            argv = deployment_argv(found[service.name], config)
            assert without_deployment_options(normalized(argv)) == normalized(service.argv), service.name
            continue
        split = {name: d for name, d in found.items() if name.startswith(f"{service.name}-") and name not in local}
        assert split and is_worker(service.argv), f"k8s/base has no Deployment for {service.name}"
        served = []
        for name, deployment in split.items():
            argv = deployment_argv(deployment, config)
            lanes = option(argv, "--lanes")
            assert lanes is not None and name == f"{service.name}-{lanes}", f"{name} must serve the one lane its name says"
            assert normalized(without_option(argv, "--lanes")) == normalized(without_option(service.argv, "--lanes")), name
            served.append(lanes)
        assert sorted(served) == sorted(worker_lanes(service.argv)), f"{service.name}: its lane Deployments serve {served}"
    assert "sandbox" not in found, "the provider sandbox is for local runs and tests, never a cluster"


def worker_deployments() -> dict[str, list[str]]:
    """Every Deployment running ``postroom worker``, with its command."""
    config = base_config()
    return {name: argv for name, d in deployments().items() if is_worker(argv := deployment_argv(d, config))}


def test_worker_deployments_serve_dramatiq_metrics_on_their_declared_port():
    found = deployments()
    assert {name: argv[2] for name, argv in worker_deployments().items()} == WORKER_DEPLOYMENTS
    for name in worker_deployments():
        deployment = found[name]
        container = main_container(deployment)
        env = container_env(container)
        assert env["dramatiq_prom_host"] == "0.0.0.0", name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert int(env["dramatiq_prom_port"]) == ports["metrics"], name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == env["dramatiq_prom_port"], name
        assert env["dramatiq_prom_db"] == env["PROMETHEUS_MULTIPROC_DIR"], name
        assert_on_empty_dir(deployment, container, env["PROMETHEUS_MULTIPROC_DIR"])


def assert_on_empty_dir(deployment: dict[str, Any], container: dict[str, Any], path: str) -> None:
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{path} is not on an emptyDir"


def test_ingest_and_scheduler_expose_metrics_prometheus_can_reach():
    found = deployments()
    ingest = found["ingest"]
    container = main_container(ingest)
    assert_on_empty_dir(ingest, container, container_env(container)["PROMETHEUS_MULTIPROC_DIR"])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert ingest["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    argv = container["command"]
    assert argv[argv.index("--bind") + 1] == f"0.0.0.0:{port}"
    (service,) = [s for s in objects(BASE, "Service") if s["metadata"]["name"] == "ingest"]
    assert service["spec"]["ports"][0]["port"] == port

    # The scheduler serves its own metrics on POSTROOM_METRICS_HOST:(PORT_BASE + 9).
    scheduler = found["scheduler"]
    config = dict(line.split("=", 1) for line in (BASE / "config.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert config["POSTROOM_METRICS_HOST"] == "0.0.0.0"
    served = {p["name"]: p["containerPort"] for p in main_container(scheduler)["ports"]}["metrics"]
    assert served == int(config["POSTROOM_METRICS_PORT_BASE"]) + 9
    assert scheduler["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(served)


def test_widget_serves_pages_streams_and_metrics_on_one_port_behind_its_service():
    """The widget is an HTTP service like ingest: Prometheus scrapes the port browsers use, the
    probes are /readyz and /healthz, and a Service in front spreads browsers over its replicas."""
    widget = deployments()["widget"]
    container = main_container(widget)
    assert_on_empty_dir(widget, container, container_env(container)["PROMETHEUS_MULTIPROC_DIR"])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert widget["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    argv = container["command"]
    assert argv[argv.index("--bind") + 1] == f"0.0.0.0:{port}"
    (service,) = [s for s in objects(BASE, "Service") if s["metadata"]["name"] == "widget"]
    assert service["spec"]["ports"][0]["port"] == port
    assert widget["spec"]["replicas"] >= 2, "a reply must reach a browser on another replica: run two"
    assert load(base_config()).postroom_widget_public_url.startswith("https://"), "the embed snippet's URL"


def test_manifests_share_one_image_and_the_postroom_labels():
    workloads = objects(BASE, "Deployment") + objects(BASE, "Job")
    assert workloads
    for obj in workloads:
        name = obj["metadata"]["name"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "postroom", name
        if obj["kind"] == "Deployment":
            assert labels["app.kubernetes.io/component"] == name
            assert obj["spec"]["selector"]["matchLabels"] == {k: labels[k] for k in LABELS}, name
        assert {c["image"] for c in pod_spec(obj)["containers"]} == {"postroom"}, name
        assert pod_spec(obj)["securityContext"]["runAsNonRoot"] is True, name
    for obj in objects(BASE):
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "postroom", obj["metadata"]["name"]
    (job,) = objects(BASE, "Job")
    assert main_job_command(job) == ["postroom", "migrate"]
    (hpa,) = objects(BASE, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ingest"
    assert "replicas" not in deployments()["ingest"]["spec"], "the HPA owns ingest's replicas"


@pytest.mark.parametrize("directory", [BASE, K8S / "autoscaling", K8S / "monitoring"], ids=lambda d: d.name)
def test_each_kustomization_lists_every_manifest_of_its_directory(directory: Path):
    """The checks here read every file of the directory; kustomize applies only what is listed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files), directory.name


def test_production_overlay_names_only_objects_of_the_base():
    """A renamed Deployment left in the overlay: kustomize fails the build on a `replicas` name
    that matches nothing (only at deploy time), and skips a patch whose target matches nothing."""
    overlay = yaml.safe_load((K8S / "overlays" / "production" / "kustomization.yaml").read_text())
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects(BASE)}
    for entry in overlay.get("replicas", []):
        assert ("Deployment", entry["name"]) in names, f"replicas: no Deployment {entry['name']}"
    for patch in overlay.get("patches", []):
        target = patch["target"]
        assert (target["kind"], target["name"]) in names, f"patches: no {target['kind']} {target['name']}"


def main_job_command(job: dict[str, Any]) -> list[str]:
    (container,) = pod_spec(job)["containers"]
    return container["command"] + container.get("args", [])


# -- settings -----------------------------------------------------------------------------------
def manifest_env_values() -> list[tuple[str, str, str]]:
    """Every environment variable given a value anywhere under k8s/ (env files, generator
    literals, container env), as (name, value, where it is set)."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(K8S.rglob("*")):
        where = str(path.relative_to(ROOT))
        if path.name.endswith(".env") or path.name.endswith(".env.example"):
            found += [(n, value, where) for n, value in env_file(path).items()]
        elif path.suffix == ".yaml":
            for doc in yaml_docs(path):
                if doc.get("kind") == "Kustomization":
                    for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
                        pairs = [literal.partition("=") for literal in generator.get("literals", [])]
                        found += [(name, value, where) for name, _, value in pairs]
                    continue
                for container in containers(doc):
                    found += [(e["name"], e.get("value", ""), where) for e in container.get("env", [])]
    return found


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def manifest_env_names() -> dict[str, str]:
    """Every environment variable name set or referred to ($(VAR)) anywhere under k8s/, with where."""
    names = {name: where for name, _, where in manifest_env_values()}
    for path in sorted(K8S.rglob("*.yaml")):
        where = str(path.relative_to(ROOT))
        for doc in yaml_docs(path):
            for container in containers(doc):
                texts = container.get("command", []) + container.get("args", [])
                texts += [entry.get("value", "") for entry in container.get("env", [])]
                for text in texts:
                    names.update({n: where for n in re.findall(r"\$\(([A-Za-z_]\w*)\)", text)})
    return names


def test_every_postroom_variable_the_manifests_set_is_a_setting():
    names = manifest_env_names()
    assert "POSTROOM_BROKER_POLL_MS" in names and "DATABASE_URL" in names  # the walk finds them
    ours = {n: where for n, where in names.items()
            if n.startswith(SETTING_PREFIXES) or n in ("DATABASE_URL", "REDIS_URL")}
    unknown = {n: where for n, where in ours.items() if n not in SETTING_NAMES}
    assert not unknown, f"not settings in common/config.py: {unknown}"


def test_the_cluster_dials_only_public_addresses_for_customers_urls():
    """Webhook endpoints and the http channel are URLs customers choose: the SSRF guard must not let
    them reach the cluster, its nodes or the metadata service unless an operator opens a network.
    The base lists the setting, empty; nothing under k8s/ gives it another value."""
    assert base_config()["POSTROOM_WEBHOOK_ALLOWED_NETWORKS"] == ""
    given = [(value, where) for name, value, where in manifest_env_values() if name == "POSTROOM_WEBHOOK_ALLOWED_NETWORKS"]
    assert given == [("", "k8s/base/config.env")]
    assert load(base_config()).postroom_webhook_allowed_networks == ""
    # A chatbot's model base_url is a tenant's choice too.
    given = [(value, where) for name, value, where in manifest_env_values() if name == "POSTROOM_AI_ALLOWED_NETWORKS"]
    assert given == [("", "k8s/base/config.env")]


def test_secrets_stay_out_of_the_configmap_and_every_container_reads_both():
    config = base_config()
    assert not SECRET_SETTINGS & set(config), "secrets belong in postroom-secrets"
    secrets = env_file(BASE / "secrets.env.example")
    assert SECRET_SETTINGS <= set(secrets)
    assert set(secrets) <= SETTING_NAMES, f"not settings: {set(secrets) - SETTING_NAMES}"
    assert not set(secrets) & set(config), "a setting both in config.env and in the Secret"
    load({**config, **secrets})  # every value parses as its setting's type
    # Nowhere else under k8s/ (an overlay's literals, a container's env) gives a secret a value.
    given = {(name, where) for name, _, where in manifest_env_values() if name in SECRET_SETTINGS}
    assert given == {(name, "k8s/base/secrets.env.example") for name in SECRET_SETTINGS}, given
    for path in K8S.rglob("*.yaml"):
        for doc in yaml_docs(path):
            assert doc.get("kind") != "Secret", f"{path}: do not commit Secrets"
            if doc.get("kind") == "Kustomization":
                assert not doc.get("secretGenerator"), f"{path}: the Secret is created outside git"
    for obj in objects(BASE, "Deployment") + objects(BASE, "Job"):
        container = main_container(obj) if obj["kind"] == "Deployment" else pod_spec(obj)["containers"][0]
        sources = {(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()}
        assert sources == {("configMapRef", "postroom-config"), ("secretRef", "postroom-secrets")}, obj["metadata"]["name"]


def test_every_credential_setting_is_kept_as_a_secret():
    """A setting named like a password, token, key or secret goes to postroom-secrets (and its
    placeholder to secrets.env.example), never to the ConfigMap."""
    credentials = {name for name in SETTING_NAMES if re.search(r"PASSWORD|TOKEN|SECRET|_KEY$", name)}
    assert {"TWILIO_AUTH_TOKEN", "SMTP_PASSWORD", "WHATSAPP_APP_SECRET", "WAHA_API_KEY"} <= credentials
    assert credentials <= SECRET_SETTINGS, f"list them in SECRET_SETTINGS: {credentials - SECRET_SETTINGS}"
    assert SECRET_SETTINGS <= SETTING_NAMES, f"not settings: {SECRET_SETTINGS - SETTING_NAMES}"


# -- metrics: alert rules and dashboard ---------------------------------------------------------
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan"}


def series_of(collector: Any) -> set[str]:
    """The series names a prometheus_client collector exposes."""
    names = set()
    for family in collector.describe():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update({family.name, family.name + "_sum", family.name + "_count"})
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def known_series(broker) -> set[str]:
    from dramatiq.middleware.prometheus import Prometheus
    from prometheus_client.metrics import MetricWrapperBase

    ours = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    (middleware,) = [m for m in broker.middleware if isinstance(m, Prometheus)]
    dramatiqs = [v for v in vars(middleware).values() if isinstance(v, MetricWrapperBase)]  # set at process boot
    assert ours and dramatiqs
    names = {"up"}
    for collector in ours + dramatiqs:
        names |= series_of(collector)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $variables allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if match.group(2) is None and match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_name_extraction_reads_promql():
    expr = ('histogram_quantile(0.95, sum by (le, lane) (rate(postroom_x_bucket{lane="urgent"}[$__rate_interval])))'
            ' > 0.5 or up{job="a"} unless dramatiq_y_total offset 10m')
    assert metric_names(expr) == {"postroom_x_bucket", "up", "dramatiq_y_total"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_use_only_metrics_that_exist(known_series):
    rules = alert_rules()
    assert rules
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known_series, f"{rule['alert']}: no such metric {used - known_series}"


def test_every_alert_rule_waits_has_a_severity_and_explains_itself():
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_prometheus_operator_rules_are_the_alert_rules_of_deploy():
    (rule,) = objects(K8S / "monitoring", "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "copy deploy/prometheus/alerts.yml's groups"


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana" / "postroom.json").read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel] + panel.get("panels", [])
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_uses_only_metrics_that_exist_through_the_datasource_variable(known_series):
    dashboard = json.loads((DEPLOY / "grafana" / "postroom.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']}: {target['expr']}"
            assert used <= known_series, f"{panel['title']}: no such metric {used - known_series}"


def test_dashboard_panels_have_unique_ids_and_never_overlap():
    """Grafana lays panels out by gridPos on 24 columns; two panels on one cell hide each other."""
    dashboard = json.loads((DEPLOY / "grafana" / "postroom.json").read_text())
    ids = [q["id"] for p in dashboard["panels"] for q in [p, *p.get("panels", [])]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:  # the panels of a collapsed row are laid out when it opens
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def charted(panels: list[dict[str, Any]]) -> set[str]:
    return {name for panel in panels for target in panel["targets"] for name in metric_names(target["expr"])}


def row_panels(title: str) -> list[dict[str, Any]]:
    """The panels under the (expanded) row ``title``: below it and above the next row."""
    top = json.loads((DEPLOY / "grafana" / "postroom.json").read_text())["panels"]
    (row,) = [p for p in top if p["type"] == "row" and p["title"] == title]
    below = [p["gridPos"]["y"] for p in top if p["type"] == "row" and p["gridPos"]["y"] > row["gridPos"]["y"]]
    end = min(below, default=float("inf"))
    return [p for p in top if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < end]


def test_every_postroom_metric_is_charted_or_alerted_on():
    """A metric nobody looks at is dead code: each one of common/metrics.py is used by a panel of
    the dashboard or by an alert rule."""
    from prometheus_client.metrics import MetricWrapperBase

    used = charted(dashboard_panels()) | {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    for collector in [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]:
        assert series_of(collector) & used, f"{sorted(series_of(collector))}: on no panel, in no alert rule"


def test_the_webhooks_row_shows_deliveries_latency_lag_and_disabled_endpoints():
    assert charted(row_panels("Webhooks")) >= {
        "postroom_webhook_delivery_seconds_count",  # deliveries/s by outcome
        "postroom_webhook_delivery_seconds_bucket",  # latency quantiles
        "postroom_webhook_outbox_lag_seconds",
        "postroom_webhook_endpoints_disabled_total",
    }
    assert {"PostroomWebhookLag", "PostroomWebhookEndpointsDisabled"} <= {rule["alert"] for rule in alert_rules()}


def test_the_backlog_row_shows_waiting_oldest_age_due_next_hour_and_schedule_lag():
    assert charted(row_panels("Backlog")) >= {
        "postroom_messages_waiting",
        "postroom_oldest_waiting_seconds",
        "postroom_scheduled_due_next_hour",
        "postroom_schedule_lag_seconds_bucket",  # p50 / p95
    }
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "PostroomBacklogOldestWaiting"]
    assert "postroom_oldest_waiting_seconds" in metric_names(rule["expr"])


def test_the_ai_row_shows_calls_latency_tokens_answers_reply_time_and_status_changes():
    assert charted(row_panels("AI and conversations")) >= {
        "postroom_ai_request_seconds_count",  # calls by model and outcome
        "postroom_ai_request_seconds_bucket",  # latency quantiles
        "postroom_ai_tokens_total",
        "postroom_ai_answers_total",
        "postroom_ai_inbound_to_reply_seconds_bucket",  # by plan lane
        "postroom_conversation_status_changes_total",
    }
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "PostroomAIErrorsHigh"]
    assert "postroom_ai_request_seconds_count" in metric_names(rule["expr"])


def test_the_widget_row_shows_open_streams_and_visitor_messages():
    assert charted(row_panels("Web chat widget")) >= {"postroom_widget_streams", "postroom_widget_visitor_messages_total"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_they_pass_their_unit_tests(tmp_path: Path):
    """Both copies of the rules are valid PromQL and templates; the webhook rules fire and stay
    quiet when deploy/prometheus/alerts.test.yml says they should."""
    (rule,) = objects(K8S / "monitoring", "PrometheusRule")
    operator_rules = tmp_path / "prometheusrule.yml"
    operator_rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    for command in (["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"), str(operator_rules)],
                    ["test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml")]):
        done = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_local_prometheus_scrapes_every_service_on_its_port():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "postroom"]  # alerts select job="postroom"
    pairs = [(sc["labels"]["service"], target) for sc in job["static_configs"] for target in sc["targets"]]
    scraped = dict(pairs)
    assert len(scraped) == len(pairs), "a service listed twice"
    assert len(set(scraped.values())) == len(pairs), "two services on one port"
    cfg = load({})
    expected = {s.name: f"127.0.0.1:{s.metrics_port}" for s in services_for(cfg) if s.metrics_port is not None}
    expected["ingest"] = f"127.0.0.1:{cfg.postroom_api_port}"
    expected["widget"] = f"127.0.0.1:{cfg.postroom_widget_port}"  # /metrics next to its pages, like ingest
    assert scraped == expected


def test_pod_monitor_labels_targets_like_the_local_config():
    (monitor,) = objects(K8S / "monitoring", "PodMonitor")
    ports = set()
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        ports.add(endpoint["port"])
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        assert relabel["job"]["replacement"] == "postroom"
        assert relabel["service"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    named_ports = {p["name"] for d in objects(BASE, "Deployment") for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
    assert named_ports <= ports


# -- autoscaling --------------------------------------------------------------------------------
def actor_queues(module_name: str) -> set[str]:
    """Queues of the actors a worker module declares (module-level actors or dicts of them)."""
    from dramatiq import Actor

    found: set[str] = set()
    for value in vars(import_module(module_name)).values():
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, Actor):
                found.add(item.queue_name)
    return found


def scaled_objects() -> dict[str, dict[str, Any]]:
    """KEDA's ScaledObjects by the Deployment they scale."""
    found: dict[str, dict[str, Any]] = {}
    for obj in objects(K8S / "autoscaling", "ScaledObject"):
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target not in found, f"two ScaledObjects scale {target}"
        found[target] = obj
    return found


def workers_and_queues() -> dict[str, set[str]]:
    """The queues each worker Deployment consumes."""
    return {name: consumed_queues(argv) for name, argv in worker_deployments().items()}


def test_every_worker_stage_has_deployments_serving_all_its_lanes_each_scaled_by_keda():
    """A stage added to services.worker.STAGE_MODULES needs its Deployment(s) and its scaler."""
    workers = worker_deployments()
    keda = scaled_objects()
    for stage in STAGE_MODULES:
        mine = {name: argv for name, argv in workers.items() if argv[2] == stage}
        assert mine, f"no Deployment runs `postroom worker {stage}`"
        lanes = [lane for argv in mine.values() for lane in worker_lanes(argv)]
        assert sorted(lanes) == sorted(lanes_of(stage)), f"{stage}: its Deployments serve the lanes {lanes}"
        for name in mine:
            assert name in keda, f"no ScaledObject scales {name}"


def test_worker_options_are_read_like_postroom_worker_reads_them():
    assert worker_lanes(["postroom", "worker", "sms", "--gevent"]) == ["urgent", "normal", "bulk"]
    assert worker_lanes(["postroom", "worker", "sms", "--lanes", "bulk", "--gevent"]) == ["bulk"]
    assert consumed_queues(["postroom", "worker", "sms", "--lanes", "urgent,bulk"]) == {"sms_urgent", "sms_bulk"}
    assert without_option(["postroom", "worker", "sms", "--lanes", "bulk", "--gevent"], "--lanes") == ["postroom", "worker", "sms", "--gevent"]
    assert worker_lanes(["postroom", "worker", "ai"]) == list(PLAN_LANES) == ["premium", "pro", "basic"]
    assert consumed_queues(["postroom", "worker", "ai", "--lanes", "pro,basic"]) == {"ai_pro", "ai_basic"}


@pytest.fixture
def every_actor(broker):
    """The broker with the actors of every stage declared (the session's broker fixture imports
    the stages tests drive; a stage added since must be counted too)."""
    for module in STAGE_MODULES.values():
        import_module(module)
    return broker


def test_every_queue_the_workers_declare_has_a_worker_in_the_cluster_and_locally(every_actor):
    """Splitting a stage's lanes over Deployments must leave none unconsumed; so must make run."""
    declared = set(every_actor.get_declared_queues())
    in_cluster = set().union(*workers_and_queues().values())
    assert in_cluster == declared, "queues no worker Deployment consumes, or no actor declares"
    local = set().union(*(consumed_queues(s.argv) for s in services_for(load({})) if is_worker(s.argv)))
    assert local == declared, "queues no local worker consumes, or no actor declares"


def test_keda_scales_each_worker_on_the_queues_it_consumes(every_actor):
    declared = set(every_actor.get_declared_queues())
    scaled: dict[str, set[str]] = {}
    for target, obj in scaled_objects().items():
        lists = set()
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            list_name = trigger["metadata"]["listName"]
            assert list_name.startswith("dramatiq:"), list_name  # the Redis broker's namespace
            lists.add(list_name.removeprefix("dramatiq:"))
        scaled[target] = lists
        assert lists <= declared, f"not queues the broker declares: {lists - declared}"
    workers = workers_and_queues()
    assert workers
    assert set(scaled) == set(workers), "every worker Deployment, and only those, is scaled by KEDA"
    for name, queues in workers.items():
        assert scaled[name] == queues, name


def test_a_worker_of_an_urgent_lane_never_has_zero_replicas():
    """An urgent queue's only consumers must always run: in the base, the overlay and under KEDA."""
    urgent = {name for name, queues in workers_and_queues().items() if any(q.endswith("_urgent") for q in queues)}
    assert {"sender-sms-urgent", "sender-http", "sender-email", "sender-whatsapp-cloud", "sender-whatsapp-qr",
            "webhooks", "sender-widget"} <= urgent
    found = deployments()
    overlay = yaml.safe_load((K8S / "overlays" / "production" / "kustomization.yaml").read_text())
    overlay_replicas = {r["name"]: r["count"] for r in overlay.get("replicas", [])}
    keda = scaled_objects()
    for name in urgent:
        assert found[name]["spec"].get("replicas", 1) >= 1, name
        assert overlay_replicas.get(name, 1) >= 1, name
        assert keda[name]["spec"]["minReplicaCount"] >= 1, name
        if WORKER_DEPLOYMENTS[name] in SENDER_STAGES:  # latency-bound: rollouts keep every pod until
            # its replacement runs (Kubernetes' default lets a quarter of them go first)
            assert found[name]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name


def test_the_ai_lanes_and_the_widget_never_have_zero_replicas():
    """Each AI lane is the only consumer of its plan's queue: a customer's question must not wait
    for a pod to start, and a premium one not behind another plan's pods."""
    found = deployments()
    overlay = {r["name"]: r["count"] for r in yaml.safe_load(
        (K8S / "overlays" / "production" / "kustomization.yaml").read_text()).get("replicas", [])}
    keda = scaled_objects()
    for lane in PLAN_LANES:
        name = f"ai-{lane}"
        assert workers_and_queues()[name] == {queue_name("ai", lane)}, name
        assert found[name]["spec"].get("replicas", 1) >= 1 and overlay.get(name, 1) >= 1, name
        assert keda[name]["spec"]["minReplicaCount"] >= 1, name
    assert found["widget"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert overlay.get("widget", 2) >= 2


# -- Procfile -----------------------------------------------------------------------------------
def procfile() -> dict[str, tuple[dict[str, str], list[str]]]:
    """Each Procfile process: the environment it sets and its argv, with shell defaults expanded."""
    cfg = load({})

    def default(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        assert name in SETTING_NAMES, name
        value = getattr(cfg, name.lower())
        if name == "POSTROOM_VAR_DIR":
            assert ROOT / fallback == Path(value), name
        else:
            assert fallback == str(value), f"${{{name}:-{fallback}}}: the setting's default is {value}"
        return fallback

    processes = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        command = re.sub(r"\$\{(\w+):-([^}]*)\}", default, command)
        command = re.sub(r"\$\(\((\d+) \+ (\d+)\)\)", lambda m: str(int(m.group(1)) + int(m.group(2))), command)
        assert "$" not in command, command
        words = shlex.split(command.split("&&")[-1])
        env = {}
        while words[0] in ("exec", "env") or re.fullmatch(r"\w+=.*", words[0]):
            word = words.pop(0)
            if "=" in word:
                key, _, value = word.partition("=")
                env[key] = value
        processes[name.strip()] = (env, words)
    return processes


def test_procfile_runs_the_same_commands_as_make_run():
    processes = procfile()
    services = services_for(load({}))
    assert list(processes) == [s.name for s in services]
    for service in services:
        env, argv = processes[service.name]
        assert normalized(argv) == normalized(service.argv), service.name
        if is_worker(service.argv):
            assert env["dramatiq_prom_port"] == str(service.metrics_port), service.name
            assert env["dramatiq_prom_db"].endswith(f"metrics/{service.name}"), service.name


def test_image_installs_postroom_without_local_or_dev_extras_and_runs_as_non_root():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    text = "\n".join(lines)
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", text)
    assert "[local" not in text and "[dev" not in text and ".whl" not in text
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user not in ("root", "0")
    assert lines[-1] == 'CMD ["postroom", "--help"]'
