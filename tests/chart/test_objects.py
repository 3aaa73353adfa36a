"""What the rendered objects say: the coordinators' flags, probes, ports, Secrets, security
context, disruption budget and services, per value set."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conftest import (
    ENDPOINTS,
    FULLNAME,
    HEADLESS,
    VALUE_SETS,
    container,
    flag,
    render_with,
    with_endpoints,
)

# The coordinator's fixed drain (server.rs DRAIN) after it resigns, and the default lease TTL:
# the grace period must outlast them.
DRAIN_SECONDS = 10
LEASE_TTL_SECONDS = 5


def workloads(rendered) -> list[dict[str, Any]]:
    return rendered.all("StatefulSet") + rendered.all("DaemonSet") + rendered.all("Deployment")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# The StatefulSet.


def test_three_coordinators_in_a_statefulset_behind_the_headless_service(render) -> None:
    r = render("defaults")
    spec = r.sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == HEADLESS
    assert r.one("Service", HEADLESS)
    assert not r.all("Deployment")
    assert selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])


@pytest.mark.parametrize("name", ["defaults", "replicas-5"])
def test_a_rolling_update_replaces_one_coordinator_at_a_time(render, name: str) -> None:
    """A StatefulSet's RollingUpdate replaces one pod at a time and waits for it to be ready; no
    maxUnavailable (alpha/beta, feature-gated) and no partition holding pods back."""
    spec = render(name).sts["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert "minReadySeconds" not in spec or spec["minReadySeconds"] >= 0


def test_pods_repel_each_other(render) -> None:
    soft = render("defaults").sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = soft["preferredDuringSchedulingIgnoredDuringExecution"]
    labels = render("defaults").sts["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    hard = render("replicas-5").sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = hard["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_the_grace_period_outlasts_the_resign_and_drain(render) -> None:
    spec = render("defaults").sts["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > DRAIN_SECONDS + LEASE_TTL_SECONDS


def test_resources_are_set(render) -> None:
    resources = render("defaults").container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


# Flags.


def test_the_coordinator_flags(render) -> None:
    c = render("defaults").container
    args = c["args"]
    assert c["command"] == ["factotum-coordinator"]
    assert flag(args, "listen") == ["0.0.0.0:7400"]
    assert flag(args, "http-listen") == ["0.0.0.0:7401"]
    assert flag(args, "etcd") == [",".join(ENDPOINTS)]
    assert flag(args, "etcd-prefix") == ["/factotum"]
    assert flag(args, "log-format") == ["json"]
    assert flag(args, "lease-ttl") == ["5s"]
    assert "--insecure" not in args
    # Each coordinator advertises its own stable DNS name (Kubernetes expands $(POD_NAME)).
    assert flag(args, "advertise") == [
        f"https://$(POD_NAME).{HEADLESS}.jobs.svc.cluster.local:7400"
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Every flag is a long one with its value attached: no stray positional arguments.
    assert all(a.startswith("--") for a in args), args


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_variable_an_argument_uses_is_defined(render, name: str) -> None:
    """Kubernetes leaves an undefined $(VAR) as it is: that would be advertised verbatim."""
    for w in workloads(render(name)):
        for c in w["spec"]["template"]["spec"]["containers"]:
            defined = {e["name"] for e in c.get("env", [])}
            for a in c.get("args", []) + c.get("command", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    assert var in defined, (w["metadata"]["name"], a)


def test_tls_flags_point_into_the_mounted_secret(render) -> None:
    r = render("defaults")
    args, c = r.args, r.container
    assert flag(args, "tls-cert") == ["/etc/factotum/tls/tls.crt"]
    assert flag(args, "tls-key") == ["/etc/factotum/tls/tls.key"]
    assert flag(args, "tls-client-ca") == ["/etc/factotum/tls/ca.crt"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/factotum/tls" and mounts["tls"]["readOnly"]
    volumes = {v["name"]: v for v in r.sts["spec"]["template"]["spec"]["volumes"]}
    # The default Secret name, e.g. what a cert-manager Certificate <fullname>-tls writes.
    assert volumes["tls"]["secret"]["secretName"] == f"{FULLNAME}-tls"
    assert volumes["tls"]["secret"]["defaultMode"] == 0o440


def test_existing_secrets_for_tls_tokens_and_etcd(render) -> None:
    r = render("tls")
    args, c = r.args, r.container
    volumes = {v["name"]: v for v in r.sts["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["tls"]["secret"]["secretName"] == "coordinator-tls"
    # Tokens: the Secret's key as a file, named by --tokens.
    assert volumes["tokens"]["secret"]["secretName"] == "factotum-tokens"
    assert volumes["tokens"]["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
    assert flag(args, "tokens") == [f"{mounts['tokens']}/tokens"]
    # etcd over mutual TLS.
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client-tls"
    assert flag(args, "etcd-ca") == [f"{mounts['etcd-tls']}/ca.crt"]
    assert flag(args, "etcd-cert") == [f"{mounts['etcd-tls']}/tls.crt"]
    assert flag(args, "etcd-key") == [f"{mounts['etcd-tls']}/tls.key"]
    # The etcd password comes from its Secret as a variable, never on the command line.
    env = {e["name"]: e for e in c["env"]}
    assert env["FACTOTUM_ETCD_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": "etcd-auth", "key": "username"
    }
    assert env["FACTOTUM_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "etcd-auth", "key": "password"
    }
    assert not flag(args, "etcd-password") and not flag(args, "etcd-user")
    assert flag(args, "webhook") == ["https://collector.example/com.snowplowanalytics.snowplow/tp2"]


def test_no_tokens_or_etcd_secrets_unless_given(render) -> None:
    r = render("defaults")
    assert not flag(r.args, "tokens") and not flag(r.args, "etcd-ca")
    names = {v["name"] for v in r.sts["spec"]["template"]["spec"]["volumes"]}
    assert names == {"tmp", "tls"}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_mount_has_its_volume(render, name: str) -> None:
    for w in workloads(render(name)):
        spec = w["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (w["metadata"]["name"], m)


def test_insecure_is_plaintext_and_says_so(render) -> None:
    r = render("insecure")
    args = r.args
    assert "--insecure" in args
    assert not [a for a in args if a.startswith("--tls-")]
    assert flag(args, "advertise")[0].startswith("http://")
    assert "tls" not in {v["name"] for v in r.sts["spec"]["template"]["spec"]["volumes"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert r.container[probe]["httpGet"]["scheme"] == "HTTP"
    assert "INSECURE" in r.notes and "--insecure" in r.notes
    assert "INSECURE" not in render("defaults").notes


# Probes and ports.


@pytest.mark.parametrize("name", ["defaults", "tls", "insecure"])
def test_probes_on_the_http_port(render, name: str) -> None:
    r = render(name)
    c = r.container
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 7400, "http": 7401}
    # The probed port is the one --http-listen serves.
    assert flag(r.args, "http-listen") == [f"0.0.0.0:{ports['http']}"]
    assert flag(r.args, "listen") == [f"0.0.0.0:{ports['grpc']}"]
    scheme = "HTTP" if r.values.get("insecure") else "HTTPS"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": scheme}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": scheme}
    assert "grpc" not in c["readinessProbe"] and "grpc" not in c["livenessProbe"]


def test_the_vip_service(render) -> None:
    r = render("defaults")
    svc = r.one("Service", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert selects(svc["spec"]["selector"], r.sts["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == 7400 and ports["grpc"]["targetPort"] == "grpc"
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http"]["port"] == 7401 and ports["http"]["targetPort"] == "http"
    assert ports["http"]["appProtocol"] == "https"
    assert render("insecure").one("Service", FULLNAME)["spec"]["ports"][1]["appProtocol"] == "http"
    assert not any("nodePort" in p for p in svc["spec"]["ports"])


def test_the_vip_service_type_is_configurable(render) -> None:
    lb = render("vip-loadbalancer").one("Service", FULLNAME)["spec"]
    assert lb["type"] == "LoadBalancer" and lb["externalTrafficPolicy"] == "Local"
    np = render("external-nodeport").one("Service", FULLNAME)["spec"]
    assert np["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in np["ports"]} == {"grpc": 30700, "http": 30701}


def test_the_headless_service(render) -> None:
    r = render("defaults")
    svc = r.one("Service", HEADLESS)["spec"]
    assert svc["clusterIP"] == "None"
    # Peers reach a new leader before it is ready; per-pod DNS names exist from the start.
    assert svc["publishNotReadyAddresses"] is True
    assert selects(svc["selector"], r.sts["spec"]["template"]["metadata"]["labels"])
    assert {p["name"]: p.get("appProtocol") for p in svc["ports"]} == {
        "grpc": "grpc", "http": "https"
    }


def test_one_external_service_per_coordinator(render) -> None:
    r = render("external-lb")
    assert flag(r.args, "advertise") == ["https://$(POD_NAME).factotum.example.com:7400"]
    externals = [
        s for s in r.all("Service") if s["metadata"]["labels"].get("factotum/service") == "external"
    ]
    assert [s["metadata"]["name"] for s in externals] == [f"{FULLNAME}-{i}" for i in range(3)]
    for i, s in enumerate(externals):
        spec = s["spec"]
        assert spec["type"] == "LoadBalancer"
        assert spec["selector"]["statefulset.kubernetes.io/pod-name"] == f"{FULLNAME}-{i}"
        assert selects(
            {k: v for k, v in spec["selector"].items() if not k.startswith("statefulset")},
            r.sts["spec"]["template"]["metadata"]["labels"],
        )
        assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
        assert [(p["name"], p["port"], p["appProtocol"]) for p in spec["ports"]] == [
            ("grpc", 7400, "grpc")
        ]
        assert s["metadata"]["annotations"] == {
            "external-dns.alpha.kubernetes.io/hostname": f"{FULLNAME}-{i}.factotum.example.com"
        }
    assert not [
        s for s in render("defaults").all("Service")
        if s["metadata"]["labels"].get("factotum/service") == "external"
    ]


def test_external_node_ports_in_pod_order(render) -> None:
    r = render("external-nodeport")
    ports = [
        (s["metadata"]["name"], s["spec"]["ports"][0]["nodePort"])
        for s in r.all("Service") if s["metadata"]["labels"].get("factotum/service") == "external"
    ]
    assert ports == [(f"{FULLNAME}-{i}", 30740 + i) for i in range(3)]
    # The advertised port follows the pod's index (the pod-index label, from Kubernetes 1.28).
    assert flag(r.args, "advertise") == ["https://nodes.example.com:3074$(POD_INDEX)"]
    env = {e["name"]: e for e in r.container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )


# Disruption budget.


@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_a_budget_keeps_a_majority_through_drains(chart, replicas: int) -> None:
    r = render_with(chart, with_endpoints(replicas=replicas))
    pdb = r.one("PodDisruptionBudget", FULLNAME)["spec"]
    assert pdb["maxUnavailable"] == 1
    # What a drain leaves is never less than a majority (half, rounded up).
    assert replicas - pdb["maxUnavailable"] >= (replicas + 1) // 2
    assert pdb["selector"]["matchLabels"] == r.sts["spec"]["selector"]["matchLabels"]


def test_no_budget_for_a_single_coordinator(render, chart) -> None:
    assert render("replicas-1").maybe("PodDisruptionBudget") is None
    assert render("replicas-1").sts["spec"]["replicas"] == 1
    off = render_with(chart, with_endpoints(podDisruptionBudget={"enabled": False}))
    assert off.maybe("PodDisruptionBudget") is None


# Security.


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_hardened_security_context_everywhere(render, name: str) -> None:
    for w in workloads(render(name)):
        spec = w["spec"]["template"]["spec"]
        where = w["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod.get("runAsUser", 1) != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root: something writable for temporary files.
            assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]] or c["name"] == "etcd"


def test_the_service_account(render) -> None:
    r = render("defaults")
    sa = r.one("ServiceAccount", FULLNAME)
    assert sa["automountServiceAccountToken"] is False
    assert r.sts["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME


# Agents and the dev etcd.


def test_no_agents_by_default(render) -> None:
    assert not render("defaults").all("DaemonSet")


def test_the_agent_daemonset(render) -> None:
    ds = render("agents").one("DaemonSet", f"{FULLNAME}-agent")
    c = container(ds, "agent")
    args = c["args"]
    assert c["command"] == ["tini", "--", "factotum-agent"]
    assert c["workingDir"] == "/tmp"
    assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]]
    # The VIP: a follower sends the agent on to the leader.
    assert flag(args, "coordinator") == [f"https://{FULLNAME}.jobs.svc:7400"]
    assert flag(args, "name") == ["$(NODE_NAME)"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert sorted(flag(args, "label")) == ["pool=etl", "zone=eu"]
    assert flag(args, "slots") == ["4"]
    assert flag(args, "tls-ca") == ["/etc/factotum/tls/ca.crt"]
    assert flag(args, "tls-cert") == ["/etc/factotum/tls/tls.crt"]
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "agent-tls"
    # Running tasks get their drain grace (60 s) and the kill grace (10 s).
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 70
    insecure = container(render("insecure-agents-monitor").one("DaemonSet"), "agent")["args"]
    assert flag(insecure, "coordinator") == [f"http://{FULLNAME}.jobs.svc:7400"]
    assert not [a for a in insecure if a.startswith("--tls-")]


def test_the_dev_etcd(render) -> None:
    r = render("dev-etcd")
    assert flag(r.args, "etcd") == [f"http://{FULLNAME}-etcd.jobs.svc:2379"]
    etcd = r.one("StatefulSet", f"{FULLNAME}-etcd")
    assert etcd["spec"]["replicas"] == 1
    svc = r.one("Service", f"{FULLNAME}-etcd")
    assert selects(svc["spec"]["selector"], etcd["spec"]["template"]["metadata"]["labels"])
    # The coordinators' selector must not pick the etcd pod up.
    etcd_labels = etcd["spec"]["template"]["metadata"]["labels"]
    assert not selects(r.sts["spec"]["selector"]["matchLabels"], etcd_labels)
    assert "WARNING: etcd.dev.enabled" in r.notes
    assert not render("defaults").all("StatefulSet")[1:]


# NOTES.txt.


def test_the_notes_name_what_the_certificate_needs(render) -> None:
    notes = render("defaults").notes
    assert f"{FULLNAME}.jobs.svc" in notes
    assert f"*.{HEADLESS}.jobs.svc.cluster.local" in notes
    assert "factotum:coordinator" in notes
    assert f"Secret {FULLNAME}-tls" in notes
    assert "externalAccess.enabled" in notes
