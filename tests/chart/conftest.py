"""Shared pieces of the chart tests: the chart rendered offline through Helm's SDK
(helm-python-sdk), its objects parsed, and the value sets the tests render.

Nothing here talks to a cluster or the network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "factotum"
RELEASE = "prod"
NAMESPACE = "jobs"
# What the release's objects are called (<release>-<chart>).
FULLNAME = "prod-factotum"
HEADLESS = f"{FULLNAME}-headless"
ENDPOINTS = ["https://etcd-0.etcd.db.svc:2379", "https://etcd-1.etcd.db.svc:2379"]
# The Kubernetes versions the objects are validated against: the chart's minimum (Chart.yaml
# kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.28", "1.37"]


def with_endpoints(**values: Any) -> dict[str, Any]:
    """`values` plus etcd endpoints (which every render needs), merged one level deep."""
    merged: dict[str, Any] = {"etcd": {"endpoints": list(ENDPOINTS)}}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


# The value sets every test renders (name -> values).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": with_endpoints(),
    "tls": with_endpoints(
        tls={"existingSecret": "coordinator-tls"},
        tokens={"existingSecret": "factotum-tokens", "key": "tokens"},
        etcd={
            "tls": {"existingSecret": "etcd-client-tls", "clientCert": True},
            "auth": {"existingSecret": "etcd-auth"},
        },
        coordinator={"webhooks": ["https://collector.example/com.snowplowanalytics.snowplow/tp2"]},
    ),
    "replicas-1": with_endpoints(replicas=1),
    "replicas-5": with_endpoints(replicas=5, coordinator={"podAntiAffinity": "hard"}),
    "servicemonitor": with_endpoints(
        serviceMonitor={"enabled": True, "labels": {"release": "kps"}}
    ),
    "servicemonitor-tokens": with_endpoints(
        tokens={"existingSecret": "factotum-tokens"},
        serviceMonitor={"enabled": True, "tokenSecret": {"name": "metrics-token", "key": "token"}},
    ),
    "agents": with_endpoints(
        agent={
            "enabled": True,
            "tls": {"existingSecret": "agent-tls"},
            "labels": {"zone": "eu", "pool": "etl"},
            "slots": 4,
        }
    ),
    "insecure": with_endpoints(insecure=True),
    "insecure-agents-monitor": with_endpoints(
        insecure=True, agent={"enabled": True}, serviceMonitor={"enabled": True}
    ),
    "external-lb": with_endpoints(
        coordinator={"advertise": "https://$(POD_NAME).factotum.example.com:7400"},
        externalAccess={
            "enabled": True,
            "annotations": {
                "external-dns.alpha.kubernetes.io/hostname": "{{ .podName }}.factotum.example.com"
            },
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
        },
    ),
    "external-nodeport": with_endpoints(
        coordinator={"advertise": "https://nodes.example.com:3074$(POD_INDEX)"},
        externalAccess={"enabled": True, "type": "NodePort", "nodePorts": [30740, 30741, 30742]},
        service={"type": "NodePort", "nodePorts": {"grpc": 30700, "http": 30701}},
    ),
    "vip-loadbalancer": with_endpoints(
        service={"type": "LoadBalancer", "externalTrafficPolicy": "Local"}
    ),
    "dev-etcd": {"etcd": {"dev": {"enabled": True}}},
}


class DuplicateKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    seen = set()
    for k in keys:
        if k in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {k!r}", node.start_mark
            )
        seen.add(k)
    return loader.construct_mapping(node, deep)


DuplicateKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates
)


@dataclass
class Rendered:
    """One render: the objects (in template order), NOTES.txt, and lookups over them."""

    values: dict[str, Any]
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def maybe(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) <= 1, f"more than one {kind} {name or ''}"
        return found[0] if found else None

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.maybe(kind, name)
        assert found is not None, f"no {kind} {name or ''} in {[o['kind'] for o in self.objects]}"
        return found

    # The coordinators' StatefulSet and its container, the usual subjects.
    @property
    def sts(self) -> dict[str, Any]:
        return self.one("StatefulSet", FULLNAME)

    @property
    def container(self) -> dict[str, Any]:
        return container(self.sts, "coordinator")

    @property
    def args(self) -> list[str]:
        return self.container["args"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> list[str]:
    """The values of `--name=value` arguments (every occurrence, in order)."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


def render_with(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    """Renders the chart as `helm template prod helm/factotum -n jobs` would."""
    manifests = chart.render(
        copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    out = Rendered(values=values)
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            out.notes = text
            continue
        assert path.endswith((".yaml", ".tpl")), path
        for doc in yaml.load_all(text, Loader=DuplicateKeyLoader):
            if doc is not None:
                assert isinstance(doc, dict) and "kind" in doc, f"{path}: not an object: {doc!r}"
                out.objects.append(doc)
    return out


@pytest.fixture(scope="session")
def render(chart: helm.Chart):
    """render(values) -> Rendered; render(name) renders the value set of that name (cached)."""
    cache: dict[str, Rendered] = {}

    def _render(values: str | dict[str, Any]) -> Rendered:
        if isinstance(values, str):
            if values not in cache:
                cache[values] = render_with(chart, VALUE_SETS[values])
            return cache[values]
        return render_with(chart, values)

    return _render


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The message of a render that must fail."""
    with pytest.raises(helm.HelmError) as failed:
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(failed.value)
