"""The chart as platform teams run it: Kueue, NetworkPolicies, the helm test pod's RBAC.

All by rendering with Helm's engine (no cluster); test_chart.py validates every object
strictly against Kubernetes' schemas, test_jobset.py the JobSet against its CRD.
"""

from __future__ import annotations

import ipaddress

import pytest

from testkit.k8s_support import (
    CHART_DIR,
    all_pod_specs,
    all_pod_templates,
    by_kind,
    job,
    load_values,
    render,
    selects,
    workload_jobs,
)
from testkit.chart_values import ALL_VALUE_SETS, IDS

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOADS = ["jobs", "jobset"]
KIND = load_values(CHART_DIR / "ci" / "kind-values.yaml")


# --- Kueue -----------------------------------------------------------------------------

def test_no_kueue_by_default():
    for workload in WORKLOADS:
        objects = render({"workload": workload})
        for obj in objects:
            assert QUEUE_LABEL not in obj["metadata"]["labels"], obj["metadata"]["name"]
        for j in workload_jobs(objects):
            assert "suspend" not in j["spec"]
        for js in by_kind(objects, "JobSet"):
            assert "suspend" not in js["spec"]


def test_kueue_queues_both_jobs_suspended():
    objects = render({"kueue": {"queueName": "team-a"}})
    for component in ("generator", "trainer"):
        j = job(objects, component)
        assert j["metadata"]["labels"][QUEUE_LABEL] == "team-a"
        assert j["spec"]["suspend"] is True
    # Only the Jobs are Kueue workloads.
    others = [o for o in objects if o["kind"] != "Job" and QUEUE_LABEL in o["metadata"]["labels"]]
    assert not others


def test_kueue_queues_the_jobset_as_one_suspended_workload():
    objects = render({"workload": "jobset", "kueue": {"queueName": "team-a"}})
    (jobset,) = by_kind(objects, "JobSet")
    assert jobset["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert jobset["spec"]["suspend"] is True
    for child in workload_jobs(objects):
        # Kueue suspends and admits the JobSet; labelled or suspended Jobs would be
        # queued (or held) a second time on their own.
        assert QUEUE_LABEL not in child["metadata"]["labels"]
        assert "suspend" not in child["spec"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_what_kueue_admits_on_is_exact(workload):
    values = {"workload": workload, "kueue": {"queueName": "q"},
              "trainer": {"accelerator": {"preset": "nvidia", "nvidia": {"count": 2}}}}
    for name, spec in all_pod_specs(render(values)):
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["resources"]["requests"] == c["resources"]["limits"], (name, c["name"])
    trainer = job(render(values), "trainer")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert trainer["requests"]["nvidia.com/gpu"] == trainer["limits"]["nvidia.com/gpu"] == 2


def test_queue_name_is_checked():
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=r"at '/kueue/queueName'"):
        render({"kueue": {"queueName": "Team A"}})


# --- NetworkPolicy ---------------------------------------------------------------------

def policies_for(objects: list[dict], pod_labels: dict) -> list[dict]:
    return [p for p in by_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels)]


def egress_allows(policies: list[dict], ip: str, port: int, protocol: str = "TCP") -> bool:
    """Whether some egress rule of `policies` lets a connection to ip:port through (ipBlock peers)."""
    for p in policies:
        for rule in p["spec"].get("egress", []):
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port and pp.get("protocol", "TCP") == protocol for pp in ports):
                continue
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block and ipaddress.ip_address(ip) in ipaddress.ip_network(block["cidr"]) and not any(
                        ipaddress.ip_address(ip) in ipaddress.ip_network(e) for e in block.get("except", [])):
                    return True
    return False


def egress_to_pods(policies: list[dict], pod_labels: dict, port: int) -> bool:
    for p in policies:
        for rule in p["spec"].get("egress", []):
            if not any(pp.get("port") == port for pp in rule.get("ports", [])):
                continue
            if any("podSelector" in peer and "namespaceSelector" not in peer
                   and selects(peer["podSelector"], pod_labels) for peer in rule.get("to", [])):
                return True
    return False


@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_pod_of_the_chart_is_selected_by_a_policy(values, workload):
    values = {**values, "workload": workload}
    if workload == "jobset":  # a JobSet always holds both components
        values = {**values, "generator": {**values.get("generator", {}), "enabled": True},
                  "trainer": {**values.get("trainer", {}), "enabled": True}}
    objects = render(values)
    if not values.get("networkPolicy", {}).get("enabled", True):
        assert not by_kind(objects, "NetworkPolicy")
        return
    pods = all_pod_templates(objects)
    assert pods
    for name, metadata in pods:
        policies = policies_for(objects, metadata["labels"])
        assert policies, f"no NetworkPolicy selects the pods of {name}"
        # Each pod is isolated both ways by at least one of them.
        types = {t for p in policies for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, (name, types)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_jobs_take_no_connections_and_reach_only_what_they_need(workload):
    objects = render({"workload": workload})
    for component in ("generator", "trainer", "test"):
        labels = ({"app.kubernetes.io/name": "ncf-tandem", "app.kubernetes.io/instance": "ncf",
                   "app.kubernetes.io/component": component})
        policies = policies_for(objects, labels)
        assert policies, component
        # Ingress: none at all.
        for p in policies:
            if "Ingress" in p["spec"]["policyTypes"]:
                assert p["spec"].get("ingress", []) == [], (component, p["metadata"]["name"])
        # DNS: the cluster DNS pods and the node-local resolvers, UDP and TCP.
        for ip in ("169.254.169.254", "169.254.20.10"):
            assert egress_allows(policies, ip, 53, "UDP") and egress_allows(policies, ip, 53, "TCP"), (component, ip)
        dns_peers = [peer for p in policies for r in p["spec"]["egress"] for peer in r.get("to", [])
                     if "namespaceSelector" in peer]
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}} in dns_peers
        # Workload Identity: the GKE metadata server.
        assert egress_allows(policies, "169.254.169.254", 80), component
        assert egress_allows(policies, "169.254.169.252", 988), component
        # storage.googleapis.com through private.googleapis.com and restricted.googleapis.com.
        assert egress_allows(policies, "199.36.153.9", 443) and egress_allows(policies, "199.36.153.5", 443)
        # Nothing else: no public address, no other port on the metadata server.
        if component != "test":
            assert not egress_allows(policies, "142.250.1.1", 443), component
            assert not egress_allows(policies, "10.0.0.1", 6443), component
        assert not egress_allows(policies, "169.254.169.254", 8080), component


def test_only_the_test_pod_reaches_the_kubernetes_api():
    objects = render({})
    base = {"app.kubernetes.io/name": "ncf-tandem", "app.kubernetes.io/instance": "ncf"}
    test = policies_for(objects, {**base, "app.kubernetes.io/component": "test"})
    assert egress_allows(test, "10.0.0.1", 443) and egress_allows(test, "172.18.0.2", 6443)
    narrowed = render({"networkPolicy": {"apiServer": {"cidrs": ["172.18.0.2/32"], "ports": [6443]}}})
    test = policies_for(narrowed, {**base, "app.kubernetes.io/component": "test"})
    assert egress_allows(test, "172.18.0.2", 6443) and not egress_allows(test, "10.0.0.1", 443)
    for component in ("generator", "trainer"):
        assert not egress_allows(policies_for(objects, {**base, "app.kubernetes.io/component": component}),
                                 "10.0.0.1", 443)


def test_allow_all_https_and_extra_egress():
    values = {"networkPolicy": {"googleApis": {"allowAllHttps": True},
                                "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.8.0.0/16"}}],
                                                 "ports": [{"protocol": "TCP", "port": 3128}]}]}}
    objects = render(values)
    labels = {"app.kubernetes.io/name": "ncf-tandem", "app.kubernetes.io/instance": "ncf",
              "app.kubernetes.io/component": "trainer"}
    policies = policies_for(objects, labels)
    assert egress_allows(policies, "142.250.1.1", 443)  # a public storage.googleapis.com address
    assert not egress_allows(policies, "142.250.1.1", 80)
    assert egress_allows(policies, "10.8.3.4", 3128)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_with_the_emulator_only_this_release_reaches_it(workload):
    objects = render({**KIND, "workload": workload})
    (svc,) = by_kind(objects, "Service")
    emulator_labels = svc["spec"]["selector"]
    port = svc["spec"]["ports"][0]["port"]
    emulator_policies = policies_for(objects, emulator_labels)
    assert emulator_policies
    (ingress_rule,) = [r for p in emulator_policies for r in p["spec"].get("ingress", [])]
    assert [pp["port"] for pp in ingress_rule["ports"]] == [port]
    (peer,) = ingress_rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    for name, metadata in all_pod_templates(objects):
        component = metadata["labels"]["app.kubernetes.io/component"]
        if component == "gcs-emulator":
            continue
        # Each of the release's pods may connect, and its own policies let it out.
        assert selects(peer["podSelector"], metadata["labels"]), name
        assert egress_to_pods(policies_for(objects, metadata["labels"]), emulator_labels, port), name
    # Another release's pod may not.
    assert not selects(peer["podSelector"], {**metadata["labels"], "app.kubernetes.io/instance": "other"})
    # The emulator connects nowhere.
    assert all(p["spec"].get("egress", []) == [] for p in emulator_policies if "Egress" in p["spec"]["policyTypes"])


def test_network_policies_can_be_turned_off():
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# --- helm test: its own ServiceAccount, token and Role ---------------------------------

@pytest.mark.parametrize("workload", WORKLOADS)
def test_only_the_test_pod_mounts_a_token_and_it_may_only_read(workload):
    objects = render({**KIND, "workload": workload, "serviceAccount": {"gcpServiceAccount": "runner@proj.iam.gserviceaccount.com"}})
    (pod,) = by_kind(objects, "Pod")
    sa_name = pod["spec"]["serviceAccountName"]
    assert sa_name == "ncf-ncf-tandem-test"
    assert pod["spec"]["automountServiceAccountToken"] is True
    for name, spec in all_pod_specs(objects):
        if name != pod["metadata"]["name"]:
            assert spec["automountServiceAccountToken"] is False, name
            assert spec.get("serviceAccountName") != sa_name, name
    sas = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    assert sas[sa_name]["automountServiceAccountToken"] is False  # mounted by the test pod alone
    # It reads the bucket as the Jobs do (Workload Identity).
    assert sas[sa_name]["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "runner@proj.iam.gserviceaccount.com"}
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": "ncf"}]
    (role,) = by_kind(objects, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    for rule in role["rules"]:
        assert rule["verbs"] == ["get", "list", "watch"], rule
        assert "*" not in rule["resources"] and "secrets" not in rule["resources"]
    readable = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    # What runstatus/kube.py lists: Jobs and pods.
    assert {("batch", "jobs"), ("", "pods")} <= readable


def test_without_tests_no_rbac_and_no_token_anywhere():
    objects = render({"tests": {"enabled": False}})
    for kind in ("Pod", "Role", "RoleBinding"):
        assert not by_kind(objects, kind)
    assert [sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")] == ["ncf-ncf-tandem"]
    for name, spec in all_pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False, name


def test_test_service_account_name_and_deadline_are_values():
    objects = render({"tests": {"serviceAccountName": "ncf-checker", "timeoutSeconds": 1200}})
    (pod,) = by_kind(objects, "Pod")
    assert pod["spec"]["serviceAccountName"] == "ncf-checker"
    assert pod["spec"]["activeDeadlineSeconds"] == 1200
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"][0]["name"] == "ncf-checker"
