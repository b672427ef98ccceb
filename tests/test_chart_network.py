"""The chart's NetworkPolicies (and GKE FQDNNetworkPolicy), judged by what they let through.

Each rendering (Helm's engine) is evaluated as the NetworkPolicy API defines it
(testkit/netpol.py): for a pod of the chart and a destination, is the connection allowed?
No cluster runs here, so this is the check that the Jobs reach the bucket on a default GKE
cluster (public Google addresses, IPv4 and IPv6) and nothing else but DNS and the metadata
server, and that nothing reaches them.
"""

from __future__ import annotations

import itertools

import pytest

from testkit.chart_values import ALL_VALUE_SETS, multi_host, with_workloads
from testkit.k8s_support import CHART_DIR, CI_VALUES, NAMESPACE, RELEASE, all_pod_templates, by_kind, load_values, render, selects
from testkit.netpol import Address, Pod, egress_allowed, ingress_allowed, policy_types
from trainer.hosts import COORDINATOR_PORT

WORKLOADS = ["jobs", "jobset"]
KIND = load_values(CHART_DIR / "ci" / "kind-values.yaml")
GKE_PROFILES = [p for p in CI_VALUES if p.name.startswith("gke-")]
PROFILES = [("defaults", {})] + [(p.name, load_values(p)) for p in GKE_PROFILES]

GOOGLE_V4 = "142.250.4.207"  # storage.googleapis.com, as a default GKE cluster resolves it
GOOGLE_V6 = "2607:f8b0:4005:80a::201b"
PRIVATE_ACCESS = ["199.36.153.9", "199.36.153.5", "2600:2d00:2:2000::1", "2600:2d00:2:1000::1"]
METADATA = [("169.254.169.254", 80), ("169.254.169.252", 988)]
NODE_DNS = ["169.254.169.254", "169.254.20.10"]
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
# Destinations and ports tried in every combination: what is not expected must be refused.
ADDRESSES = [GOOGLE_V4, GOOGLE_V6, "8.8.8.8", "10.0.0.1", "172.18.0.2", "169.254.169.254", "169.254.169.252",
             "169.254.20.10", *PRIVATE_ACCESS]
PORTS = [22, 53, 80, 443, 988, 3128, 4443, 6443, 8080]
PROTOCOLS = ["TCP", "UDP"]


def chart_pod(component: str, release: str = RELEASE) -> Pod:
    return Pod(NAMESPACE, {"app.kubernetes.io/name": "ncf-tandem", "app.kubernetes.io/instance": release,
                           "app.kubernetes.io/component": component},
               {"kubernetes.io/metadata.name": NAMESPACE})


def allowed_addresses(objects: list[dict], pod: Pod) -> set[tuple[str, int, str]]:
    return {(ip, port, proto) for ip, port, proto in itertools.product(ADDRESSES, PORTS, PROTOCOLS)
            if egress_allowed(objects, pod, Address(ip), port, proto)}


def https_to(ips) -> set[tuple[str, int, str]]:
    return {(ip, 443, "TCP") for ip in ips}


def dns_and_metadata() -> set[tuple[str, int, str]]:
    return {(ip, 53, proto) for ip in NODE_DNS for proto in PROTOCOLS} | {(ip, port, "TCP") for ip, port in METADATA}


def api_server() -> set[tuple[str, int, str]]:
    """The helm test pod's extra: the Kubernetes API, on any IPv4 address by default."""
    return {(ip, port, "TCP") for ip in ADDRESSES if ":" not in ip for port in (443, 6443)}


@pytest.mark.parametrize("values,workload", [(v, w) for _, v, w in with_workloads(ALL_VALUE_SETS)],
                         ids=[f"{n}-{w}" for n, _, w in with_workloads(ALL_VALUE_SETS)])
def test_every_pod_of_the_chart_is_isolated_both_ways(values, workload):
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
        policies = [p for p in by_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"], metadata["labels"])]
        types = {t for p in policies for t in policy_types(p)}
        assert types == {"Ingress", "Egress"}, (name, types)


@pytest.mark.parametrize("values,workload", [(v, w) for _, v, w in with_workloads(PROFILES)],
                         ids=[f"{n}-{w}" for n, _, w in with_workloads(PROFILES)])
def test_by_default_https_goes_anywhere_and_nothing_else_but_dns_and_the_metadata_server(values, workload):
    objects = render({**values, "workload": workload})
    for component in ("generator", "trainer", "test"):
        pod = chart_pod(component)
        expected = https_to(ADDRESSES) | dns_and_metadata() | (api_server() if component == "test" else set())
        assert allowed_addresses(objects, pod) == expected, component
        assert egress_allowed(objects, pod, Address(GOOGLE_V4), 443)
        assert egress_allowed(objects, pod, Address(GOOGLE_V6), 443)
        # The cluster DNS pods, on 53 only.
        assert egress_allowed(objects, pod, KUBE_DNS, 53, "UDP") and egress_allowed(objects, pod, KUBE_DNS, 53, "TCP")
        assert not egress_allowed(objects, pod, KUBE_DNS, 8080)
        # No other pod: not even another release's in the same namespace.
        assert not egress_allowed(objects, pod, chart_pod("generator", "other"), 443)
        # Several trainer hosts reach one another (test_trainer_hosts_reach_one_another).
        peer = chart_pod("trainer") if component == "trainer" and multi_host(values) else None
        assert_no_ingress(objects, pod, but=peer)


def assert_no_ingress(objects: list[dict], pod: Pod, but: Pod | None = None) -> None:
    """Nothing connects to `pod`, but the peer `but` (a multi-host trainer's other hosts)."""
    for source, port in itertools.product([chart_pod("trainer"), chart_pod("test", "other"), KUBE_DNS,
                                           Address("10.0.0.1"), Address(GOOGLE_V4)], [80, 443, 4443, 8080]):
        if source != but:
            assert not ingress_allowed(objects, pod, source, port), (pod.labels, source, port)


def test_trainer_hosts_reach_one_another_and_no_one_else_reaches_them():
    objects = render({"dataDir": "gs://b/p", "workload": "jobset", "trainer": {"hosts": 2}})
    host0, host1, generator = chart_pod("trainer"), chart_pod("trainer"), chart_pod("generator")
    # Host 1 reaches JAX's coordinator on host 0, and any port for the collectives (NCCL's are picked at run time).
    for port in (COORDINATOR_PORT, 43117):
        assert egress_allowed(objects, host1, host0, port) and ingress_allowed(objects, host0, host1, port), port
    # Only this release's trainer pods: not its generator or test pod, not another release's trainer.
    for other in (generator, chart_pod("test"), chart_pod("trainer", "other")):
        assert not ingress_allowed(objects, host0, other, COORDINATOR_PORT), other
        assert not egress_allowed(objects, host1, other, COORDINATOR_PORT), other
    # The generator is still out of reach, from the trainer and from outside.
    for source in (host1, Address("10.0.0.1"), KUBE_DNS):
        assert not ingress_allowed(objects, generator, source, COORDINATOR_PORT), source
    # One host: no trainer-to-trainer rule at all.
    single = render({"dataDir": "gs://b/p", "workload": "jobset"})
    assert not egress_allowed(single, host1, host0, COORDINATOR_PORT)
    assert not ingress_allowed(single, host0, host1, COORDINATOR_PORT)


def test_private_google_access_only():
    objects = render({"networkPolicy": {"googleApis": {"egress": "privateGoogleAccess"}}})
    for component in ("generator", "trainer"):
        assert allowed_addresses(objects, chart_pod(component)) == https_to(PRIVATE_ACCESS) | dns_and_metadata()
    assert not by_kind(objects, "FQDNNetworkPolicy")


@pytest.mark.parametrize("training, grouplens", [
    ({}, True),  # ml-20m downloaded from GroupLens
    ({"ratings": "gs://b/ml-20m/ratings.csv"}, False),
    ({"dataset": "synthetic-small"}, False),
])
def test_fqdn_mode_allows_https_to_the_named_hosts_only(training, grouplens):
    values = {"dataDir": "gs://b/p", "networkPolicy": {"googleApis": {"egress": "fqdn"}},
              "trainer": {"training": training}}
    objects = render(values)
    (fqdn,) = by_kind(objects, "FQDNNetworkPolicy")
    assert fqdn["apiVersion"] == "networking.gke.io/v1alpha1"
    for component in ("generator", "trainer", "test"):
        pod = chart_pod(component)
        # By address alone only DNS and the metadata server (and the test pod's API server).
        assert allowed_addresses(objects, pod) == dns_and_metadata() | (api_server() if component == "test" else set())
        assert egress_allowed(objects, pod, Address(GOOGLE_V4, "storage.googleapis.com"), 443)
        assert egress_allowed(objects, pod, Address(GOOGLE_V6, "storage.googleapis.com"), 443)
        assert not egress_allowed(objects, pod, Address(GOOGLE_V4, "storage.googleapis.com"), 80)
        if component != "test":  # the test pod reaches the API server's range on 443 anyway
            assert not egress_allowed(objects, pod, Address("203.0.113.7", "example.com"), 443)
            grouplens_ip = Address("128.101.65.178", "files.grouplens.org")
            assert egress_allowed(objects, pod, grouplens_ip, 443) is grouplens
        assert_no_ingress(objects, pod)


def test_the_test_pod_alone_reaches_the_kubernetes_api():
    narrowed = render({"networkPolicy": {"apiServer": {"cidrs": ["172.18.0.2/32"], "ports": [6443]}}})
    test = chart_pod("test")
    assert egress_allowed(narrowed, test, Address("172.18.0.2"), 6443)
    assert not egress_allowed(narrowed, test, Address("10.0.0.1"), 6443)
    for component in ("generator", "trainer"):
        assert not egress_allowed(render({}), chart_pod(component), Address("10.0.0.1"), 6443)


def test_extra_egress_is_added():
    values = {"networkPolicy": {"extraEgress": [{"to": [{"ipBlock": {"cidr": "10.8.0.0/16"}}],
                                                 "ports": [{"protocol": "TCP", "port": 3128}]}]}}
    objects = render(values)
    trainer = chart_pod("trainer")
    assert egress_allowed(objects, trainer, Address("10.8.3.4"), 3128)
    assert not egress_allowed(objects, trainer, Address("10.9.3.4"), 3128)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_with_the_emulator_only_this_release_reaches_it(workload):
    objects = render({**KIND, "workload": workload})
    (svc,) = by_kind(objects, "Service")
    port = svc["spec"]["ports"][0]["port"]
    emulator = Pod(NAMESPACE, svc["spec"]["selector"], {"kubernetes.io/metadata.name": NAMESPACE})
    for name, metadata in all_pod_templates(objects):
        if metadata["labels"]["app.kubernetes.io/component"] == "gcs-emulator":
            continue
        client = Pod(NAMESPACE, metadata["labels"], emulator.namespace_labels)
        assert egress_allowed(objects, client, emulator, port), name
        assert ingress_allowed(objects, emulator, client, port), name
        assert not ingress_allowed(objects, emulator, client, port + 1), name
        other = Pod(NAMESPACE, {**metadata["labels"], "app.kubernetes.io/instance": "other"}, emulator.namespace_labels)
        assert not ingress_allowed(objects, emulator, other, port), name
    # The emulator connects nowhere.
    assert not egress_allowed(objects, emulator, Address(GOOGLE_V4), 443)
    assert not egress_allowed(objects, emulator, KUBE_DNS, 53, "UDP")


def test_network_policies_can_be_turned_off():
    objects = render({"networkPolicy": {"enabled": False, "googleApis": {"egress": "fqdn"}}})
    assert not by_kind(objects, "NetworkPolicy") and not by_kind(objects, "FQDNNetworkPolicy")
    assert egress_allowed(objects, chart_pod("trainer"), Address("8.8.8.8"), 22)


def test_the_evaluator_follows_the_api_where_the_chart_does_not_go():
    """Cases the chart's own policies never exercise, so a wrong evaluator cannot pass silently."""
    def policy(spec: dict) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "p", "namespace": NAMESPACE}, "spec": {"podSelector": {}, **spec}}

    pod = chart_pod("trainer")
    # No egress section and no policyTypes: only ingress is isolated.
    assert egress_allowed([policy({"ingress": []})], pod, Address("8.8.8.8"), 22)
    assert not ingress_allowed([policy({"ingress": []})], pod, Address("8.8.8.8"), 22)
    # except carves out of cidr; endPort makes a range; a protocol alone means every port.
    carve = policy({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                "ports": [{"port": 8000, "endPort": 8010}, {"protocol": "UDP"}]}]})
    assert egress_allowed([carve], pod, Address("10.2.0.1"), 8005)
    assert not egress_allowed([carve], pod, Address("10.1.0.1"), 8005)
    assert not egress_allowed([carve], pod, Address("10.2.0.1"), 8011)
    assert egress_allowed([carve], pod, Address("10.2.0.1"), 9999, "UDP")
    # An empty rule allows everything; a policy in another namespace does not apply.
    assert egress_allowed([policy({"egress": [{}]})], pod, Address("8.8.8.8"), 22)
    elsewhere = policy({"egress": []})
    elsewhere["metadata"]["namespace"] = "other"
    assert egress_allowed([elsewhere], pod, Address("8.8.8.8"), 22)
    # A FQDN pattern's * is one DNS label.
    fqdn = {"apiVersion": "networking.gke.io/v1alpha1", "kind": "FQDNNetworkPolicy",
            "metadata": {"name": "f", "namespace": NAMESPACE},
            "spec": {"podSelector": {}, "egress": [{"matches": [{"pattern": "*.example.com"}]}]}}
    assert egress_allowed([fqdn], pod, Address("203.0.113.7", "api.example.com"), 443)
    assert not egress_allowed([fqdn], pod, Address("203.0.113.7", "a.api.example.com"), 443)
    assert not egress_allowed([fqdn], pod, Address("203.0.113.7", "example.com"), 443)
