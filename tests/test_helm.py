"""Checks of the Helm chart in helm/vlmserve, without a cluster.

Helm itself (the Helm 4 SDK through `helm-python-sdk`) lints and renders the chart exactly as
`helm lint --strict` and `helm template -f <file>` would, the values schema included; every
rendered object of a built-in kind is then validated with `kubernetes-validate` in strict mode
(unknown fields rejected) against the oldest Kubernetes the chart supports and the newest the
validator knows.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from vlmserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "vlmserve"
VALUE_SETS = ["default"] + sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# Chart.yaml's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE, NAMESPACE = "demo", "ai"
# Custom resources: no built-in schema, their shape is checked by hand below.
CRD_API_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
GPU = "nvidia.com/gpu"


def values_of(value_set: str) -> dict[str, Any]:
    """The user values of a set, parsed by Helm's own YAML reader (as `-f file` does)."""
    if value_set == "default":
        return {}
    return helm.values_from_yaml((CHART / "ci" / value_set).read_text())


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@cache
def rendered(value_set: str) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(objects, merged values, NOTES.txt) for a value set."""
    values = values_of(value_set)
    out = render_raw(values)
    notes = out.pop("vlmserve/templates/NOTES.txt")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return docs, chart().merge_values(values), notes


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def model_objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Objects of ``kind`` that belong to a model (the router's and Redis' have no model label)."""
    return [d for d in of_kind(docs, kind) if "vlmserve/model" in d["metadata"]["labels"]]


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- Helm lint and Kubernetes schemas ------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_passes(value_set: str) -> None:
    report = helm.lint(CHART, values_of(value_set) or None, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], json.dumps(report["messages"], indent=1)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_objects_pass_kubernetes_strict_schemas(value_set: str) -> None:
    docs, _, _ = rendered(value_set)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_API_GROUPS):
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                where = "/".join(str(p) for p in err.path)
                pytest.fail(
                    f"{doc['kind']} {doc['metadata']['name']} on {version}: {where}: {err.message}"
                )
        checked += 1
    assert checked >= 3  # at least a Deployment, a Service and a PodDisruptionBudget


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator really checks: a misspelt field in a rendered Deployment is refused."""
    docs, _, _ = rendered("default")
    deployment = json.loads(json.dumps(model_objects(docs, "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# -- What the objects say ------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gpu_request_equals_tensor_parallel_size(value_set: str) -> None:
    docs, values, _ = rendered(value_set)
    models = {m["name"]: m for m in values["models"]}
    for deployment in model_objects(docs, "Deployment"):
        model = models[deployment["metadata"]["labels"]["vlmserve/model"]]
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        env = env_of(deployment)
        if model.get("engine") == "transformers":
            assert GPU not in resources.get("limits", {})
            assert "VLMSERVE_TENSOR_PARALLEL_SIZE" not in env
            continue
        tp = model.get("tensorParallelSize", 1)
        assert resources["limits"][GPU] == tp
        assert resources["requests"][GPU] == tp
        assert env["VLMSERVE_TENSOR_PARALLEL_SIZE"]["value"] == str(tp)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_shutdown_and_probe_timing(value_set: str) -> None:
    docs, values, _ = rendered(value_set)
    drain = values["shutdown"]["drainSeconds"]
    for deployment in model_objects(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert env_of(deployment)["VLMSERVE_SHUTDOWN_GRACE_SECONDS"]["value"] == str(drain)
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert sleep == values["shutdown"]["preStopSleepSeconds"]
        # Kubernetes counts the preStop hook inside the grace period.
        assert pod["terminationGracePeriodSeconds"] > sleep + drain
        live = container["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > drain
        start = container["startupProbe"]
        model = next(
            m
            for m in values["models"]
            if m["name"] == deployment["metadata"]["labels"]["vlmserve/model"]
        )
        budget = model.get("startupTimeoutSeconds", values["probes"]["startupTimeoutSeconds"])
        assert start["periodSeconds"] * start["failureThreshold"] >= budget
        for probe in (start, container["readinessProbe"], live):
            assert probe["httpGet"] == {"path": "/health", "port": "http"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_are_non_root_with_memory_backed_shm(value_set: str) -> None:
    docs, _, _ = rendered(value_set)
    for deployment in model_objects(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/dev/shm"] == "shm"
        assert env_of(deployment)["VLMSERVE_HOST"]["value"] == "0.0.0.0"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_each_model_has_its_own_service_and_budget(value_set: str) -> None:
    docs, values, _ = rendered(value_set)
    deployments = model_objects(docs, "Deployment")
    assert len(deployments) == len(values["models"])
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]
    for kind in ("Service", "PodDisruptionBudget"):
        objects = model_objects(docs, kind)
        assert len(objects) == len(deployments)
        for obj in objects:
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert sum(selects(selector, labels) for labels in pod_labels) == 1, obj["metadata"][
                "name"
            ]
    served = [env_of(d)["VLMSERVE_SERVED_MODEL_NAME"]["value"] for d in deployments]
    assert len(set(served)) == len(served)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_autoscaled_deployments_leave_replicas_to_the_scaler(value_set: str) -> None:
    docs, _, _ = rendered(value_set)
    deployments = {d["metadata"]["name"]: d for d in model_objects(docs, "Deployment")}
    scaled = [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")]
    scaled += [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject")]
    assert len(scaled) == len(set(scaled)), "a Deployment has two scalers"
    for name, deployment in deployments.items():
        assert ("replicas" in deployment["spec"]) == (name not in scaled)
    assert set(scaled) <= set(deployments)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_custom_resources_point_at_rendered_objects(value_set: str) -> None:
    """ServiceMonitor and ScaledObject have no built-in schema: check their shape and references."""
    docs, values, _ = rendered(value_set)
    services = model_objects(docs, "Service")
    for monitor in of_kind(docs, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
        matched = [
            s for s in services if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(matched) == len(services)
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        for endpoint in spec["endpoints"]:
            assert endpoint["path"] == "/metrics"
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matched)
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    metric = values["autoscaling"]["queueMetric"]
    for scaled in of_kind(docs, "ScaledObject"):
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]["name"]
        assert target in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert f'{metric}{{namespace="{NAMESPACE}",service="{target}"}}' in query
        assert float(trigger["metadata"]["threshold"]) > 0
        assert trigger["metadata"]["serverAddress"].startswith("http")
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == metric


# -- Particular value sets -----------------------------------------------------------------------


def test_two_models_render_side_by_side_with_their_own_settings() -> None:
    docs, _, _ = rendered("two-models-values.yaml")
    by_model = {
        d["metadata"]["labels"]["vlmserve/model"]: d for d in model_objects(docs, "Deployment")
    }
    assert set(by_model) == {"phi3v", "llava34b"}
    small, large = env_of(by_model["phi3v"]), env_of(by_model["llava34b"])
    assert small["VLMSERVE_SERVED_MODEL_NAME"]["value"] == "phi-3-vision"
    assert large["VLMSERVE_MODEL"]["value"] == "llava-hf/llava-v1.6-34b-hf"
    assert large["VLMSERVE_SERVED_MODEL_NAME"]["value"] == "llava-1.6-34b"
    # A model's own settings win over the global ones, and do not leak into the other model.
    assert large["VLMSERVE_LOG_LEVEL"]["value"] == "debug"
    assert small["VLMSERVE_LOG_LEVEL"]["value"] == "info"
    assert "VLMSERVE_GPU" not in small
    assert by_model["llava34b"]["spec"]["strategy"] == {"type": "Recreate"}


def test_numbers_reach_the_server_as_plain_decimals() -> None:
    """Helm reads numbers as floats; printed naively 20000000 becomes 2e+07, which int() refuses."""
    docs, _, _ = rendered("quantized-values.yaml")
    env = env_of(model_objects(docs, "Deployment")[0])
    assert env["VLMSERVE_QUANTIZATION"]["value"] == "bitsandbytes"
    assert env["VLMSERVE_MAX_IMAGE_BYTES"]["value"] == "20000000"
    assert env["VLMSERVE_MAX_IMAGE_PIXELS"]["value"] == "40000000"
    assert env["VLMSERVE_GPU_MEMORY_UTILIZATION"]["value"] == "0.92"
    assert env["VLMSERVE_ALLOW_PRIVATE_MEDIA_URLS"]["value"] == "false"
    # And the server's own settings class accepts what the chart wrote.
    settings = Settings(
        **{
            k.removeprefix("VLMSERVE_").lower(): e["value"]
            for k, e in env.items()
            if k.startswith("VLMSERVE_") and "value" in e
        }
    )
    assert settings.max_image_bytes == 20_000_000
    assert settings.gpu_memory_utilization == pytest.approx(0.92)
    assert settings.shutdown_grace_seconds == 30


def test_existing_secret_and_claim_are_used_not_created() -> None:
    docs, _, _ = rendered("existing-secret-and-claim-values.yaml")
    assert of_kind(docs, "Secret") == [] and of_kind(docs, "PersistentVolumeClaim") == []
    (deployment,) = model_objects(docs, "Deployment")
    env = env_of(deployment)
    assert env["VLMSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "vlm-credentials",
        "key": "keys",
        "optional": True,
    }
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "hf-cache-rwx"


def test_created_secret_holds_the_keys_and_rolls_the_pods() -> None:
    docs, _, _ = rendered("ingress-autoscaling-monitoring-values.yaml")
    (secret,) = of_kind(docs, "Secret")
    assert (
        secret["stringData"]["api-keys"] == "sk-team-a-0123456789abcdef,sk-team-b-fedcba9876543210"
    )
    for deployment in model_objects(docs, "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/auth"])
        ref = env_of(deployment)["VLMSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]


def test_ingress_routes_each_host_to_its_model() -> None:
    docs, _, _ = rendered("ingress-autoscaling-monitoring-values.yaml")
    (ingress,) = of_kind(docs, "Ingress")
    services = {s["metadata"]["name"]: s for s in model_objects(docs, "Service")}
    routes = {}
    for rule in ingress["spec"]["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        service = services[backend["name"]]
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        routes[rule["host"]] = service["metadata"]["labels"]["vlmserve/model"]
    assert routes == {"llava.vlm.example.com": "llava", "phi.vlm.example.com": "phi3v"}
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "64m"
    )


def test_cpu_model_requests_no_gpu_and_keeps_the_cache_in_memory_of_the_node() -> None:
    docs, _, _ = rendered("cpu-only-values.yaml")
    (deployment,) = model_objects(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert {"name": "cache", "emptyDir": {}} in pod["volumes"]
    assert of_kind(docs, "PersistentVolumeClaim") == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_notes_hold_a_python_snippet_that_compiles(value_set: str) -> None:
    docs, values, notes = rendered(value_set)
    snippet = notes.split("# --- python ---\n", 1)[1].split("# --- end ---", 1)[0]
    compile(snippet, "NOTES.txt", "exec")
    first = values["models"][0]
    assert f'model="{first.get("servedModelName") or first["model"]}"' in snippet
    service = model_objects(docs, "Service")[0]["metadata"]["name"]
    assert f"port-forward svc/{service} 8000:" in notes


# -- router and shared state ---------------------------------------------------------------------


def test_router_fronts_every_model_with_a_config_from_values() -> None:
    docs, _, _ = rendered("router-redis-values.yaml")
    (config_map,) = of_kind(docs, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["router.yaml"])
    # The router's own loader accepts what the chart writes.
    from vlmserve.router.config import RouterConfig

    parsed = RouterConfig.model_validate(config)
    bases = {b.model: b.api_base for b in parsed.backends}
    services = {s["metadata"]["name"] for s in model_objects(docs, "Service")}
    assert bases["llava-1.5-7b"] == f"http://{RELEASE}-vlmserve-llava:8000/v1"
    assert bases["internvl2-8b"] == f"http://{RELEASE}-vlmserve-internvl2:8000/v1"
    assert {f"{RELEASE}-vlmserve-llava", f"{RELEASE}-vlmserve-internvl2"} <= services
    assert (
        bases["gpt-4o-mini"] is None and parsed.backends[-1].api_key == "os.environ/OPENAI_API_KEY"
    )
    router = next(
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")
    )
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["vlmserve", "route"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "hosted-api-keys"
    assert env["VLMSERVE_REDIS_URL"]["value"] == f"redis://{RELEASE}-vlmserve-redis:6379/0"


def test_redis_is_wired_into_every_model_pod() -> None:
    docs, _, _ = rendered("router-redis-values.yaml")
    url = f"redis://{RELEASE}-vlmserve-redis:6379/0"
    for deployment in model_objects(docs, "Deployment"):
        assert env_of(deployment)["VLMSERVE_REDIS_URL"]["value"] == url
    redis = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-redis"))
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"

    docs, _, _ = rendered("existing-redis-values.yaml")
    assert not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-redis")]
    for deployment in model_objects(docs, "Deployment"):
        ref = env_of(deployment)["VLMSERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "shared-redis", "key": "url"}
    docs, _, _ = rendered("default")
    assert all("VLMSERVE_REDIS_URL" not in env_of(d) for d in model_objects(docs, "Deployment"))


def test_router_needs_a_tier_for_every_model() -> None:
    with pytest.raises(Exception, match="router.models"):
        render_raw({"router": {"enabled": True}})
