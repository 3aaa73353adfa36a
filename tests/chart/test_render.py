"""Every value set renders, and every object it renders is valid Kubernetes (kubernetes-validate,
strict: an unknown or misspelt field fails) at the chart's minimum version and the newest one;
the ServiceMonitor, which has no schema here, is checked by hand. Values that cannot work fail
to render with a message naming the value."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from conftest import FULLNAME, KUBE_VERSIONS, VALUE_SETS, render_error, with_endpoints

# What kubernetes-validate has no schema for (CRDs), checked by hand below.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def validate(obj: dict[str, Any]) -> None:
    for kube in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            where = f"{obj['kind']}/{obj['metadata']['name']} at {path} (k8s {kube})"
            pytest.fail(f"{where}: {e.message}")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(render, name: str) -> None:
    rendered = render(name)
    assert rendered.objects
    for obj in rendered.objects:
        assert obj["metadata"]["name"], obj
        assert obj["metadata"].get("namespace") == "jobs", obj["metadata"]
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            continue
        validate(obj)


def test_the_validation_is_strict(render) -> None:
    """A misspelt field fails: the check above is not vacuous."""
    sts = copy.deepcopy(render("defaults").sts)
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)


def test_object_names_are_unique_per_kind(render) -> None:
    for name in VALUE_SETS:
        seen = [(o["kind"], o["metadata"]["name"]) for o in render(name).objects]
        assert len(seen) == len(set(seen)), (name, seen)


@pytest.mark.parametrize(
    "name", ["servicemonitor", "servicemonitor-tokens", "insecure-agents-monitor"]
)
def test_the_servicemonitor_by_hand(render, name: str) -> None:
    rendered = render(name)
    sm = rendered.one("ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["namespaceSelector"] == {"matchNames": ["jobs"]}
    # It selects exactly one Service (the headless one: each pod scraped once), by its labels.
    wanted = spec["selector"]["matchLabels"]
    matching = [
        s for s in rendered.all("Service")
        if wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in matching] == [f"{FULLNAME}-headless"]
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {
        "port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig", "authorization"
    }
    assert endpoint["port"] in [p["name"] for p in matching[0]["spec"]["ports"]]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    if rendered.values.get("insecure"):
        assert endpoint["scheme"] == "http" and "tlsConfig" not in endpoint
    else:
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"] == {
            "serverName": f"{FULLNAME}.jobs.svc",
            "ca": {"secret": {"name": f"{FULLNAME}-tls", "key": "ca.crt"}},
        }
    if name == "servicemonitor-tokens":
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": "metrics-token", "key": "token"},
        }
    else:
        assert "authorization" not in endpoint
    if name == "servicemonitor":
        assert sm["metadata"]["labels"]["release"] == "kps"


def test_no_servicemonitor_by_default(render) -> None:
    assert not render("defaults").all("ServiceMonitor")


# Values that must not render, and what the message must name.
REFUSED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "no etcd endpoints": ({}, ["etcd.endpoints is required", "etcd.dev.enabled"]),
    "empty etcd endpoints": ({"etcd": {"endpoints": []}}, ["etcd.endpoints is required"]),
    "endpoints and the dev etcd": (
        with_endpoints(etcd={"dev": {"enabled": True}}),
        ["etcd.endpoints and etcd.dev.enabled are exclusive"],
    ),
    "an endpoint that is not a URL": (
        {"etcd": {"endpoints": ["etcd-0:2379"]}},
        ["/etcd/endpoints/0"],
    ),
    "endpoints as one string": (
        {"etcd": {"endpoints": "https://etcd-0:2379"}},
        ["/etcd/endpoints"],
    ),
    "external access without an advertised address": (
        with_endpoints(externalAccess={"enabled": True}),
        ["coordinator.advertise is required with externalAccess.enabled"],
    ),
    "too few node ports": (
        with_endpoints(
            coordinator={"advertise": "https://n.example:3074$(POD_INDEX)"},
            externalAccess={"enabled": True, "type": "NodePort", "nodePorts": [30740]},
        ),
        ["externalAccess.nodePorts", "replicas: 3, given: 1"],
    ),
    "agents without certificates": (
        with_endpoints(agent={"enabled": True}),
        ["agent.tls.existingSecret is required"],
    ),
    "a ServiceMonitor without a token when tokens are on": (
        with_endpoints(tokens={"existingSecret": "t"}, serviceMonitor={"enabled": True}),
        ["serviceMonitor.tokenSecret.name is required"],
    ),
    "an unknown service type": (
        with_endpoints(service={"type": "ExternalName"}),
        ["/service/type"],
    ),
    "no coordinators": (with_endpoints(replicas=0), ["/replicas"]),
    "a grace period below the resign time": (
        with_endpoints(coordinator={"terminationGracePeriodSeconds": 5}),
        ["/coordinator/terminationGracePeriodSeconds"],
    ),
    "a misspelt value": (with_endpoints(replica=3), ["replica"]),
    "a misspelt nested value": (with_endpoints(tls={"existingSecrets": "x"}), ["existingSecrets"]),
    "an unknown anti-affinity": (
        with_endpoints(coordinator={"podAntiAffinity": "always"}),
        ["/coordinator/podAntiAffinity"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(chart, case: str) -> None:
    values, wanted = REFUSED[case]
    message = render_error(chart, values)
    for w in wanted:
        assert w in message, message
