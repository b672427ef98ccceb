"""Which connections a set of rendered NetworkPolicies lets through, as the NetworkPolicy API
defines it (networking.k8s.io/v1, https://kubernetes.io/docs/concepts/services-networking/network-policies/),
plus GKE's FQDNNetworkPolicy (networking.gke.io/v1alpha1), so the chart's policies are judged
by what they do rather than by how they are written:

- a policy applies to the pods of its namespace that its podSelector selects;
- policyTypes defaults to Ingress, plus Egress when the policy has an egress section;
- a pod selected by no policy of a direction is not isolated in that direction: all is allowed;
- otherwise a connection is allowed when at least one rule of one applicable policy allows it
  (rules are a union, across policies too): its ports (none: every port; port and endPort,
  protocol TCP unless given) and its peers (none: every peer; ipBlock cidr minus except, for
  addresses outside the cluster; podSelector and namespaceSelector, for pods);
- a GKE FQDNNetworkPolicy isolates the pods it selects for egress and adds its allow rules to
  the NetworkPolicies' ones: a connection to an address resolved from a matching name (`name`
  exactly, or `pattern` with `*` standing for one DNS label) on a matching port.
Named ports cannot be resolved without the pods' specs: a named port matches nothing here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

from testkit.k8s_support import selects

FQDN_KIND = ("networking.gke.io", "FQDNNetworkPolicy")


@dataclass
class Pod:
    """A pod as policies see it: its namespace's labels and its own."""

    namespace: str
    labels: dict = field(default_factory=dict)
    namespace_labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Address:
    """An address outside the cluster, and the name it was resolved from, if any."""

    ip: str
    hostname: str | None = None


Peer = Pod | Address


def policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _applies(policy: dict, pod: Pod) -> bool:
    namespace = policy["metadata"].get("namespace")
    return namespace == pod.namespace and selects(policy["spec"]["podSelector"], pod.labels)


def _port_matches(ports: list[dict] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True  # a protocol alone: every port
        if isinstance(p["port"], int) and p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _in_block(block: dict, ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except", [])
                   if ipaddress.ip_network(e).version == address.version)


def _peer_matches(peers: list[dict] | None, peer: Peer, own_namespace: str) -> bool:
    if not peers:
        return True
    for p in peers:
        if "ipBlock" in p:
            if isinstance(peer, Address) and _in_block(p["ipBlock"], peer.ip):
                return True
            continue
        if not isinstance(peer, Pod):
            continue
        if "namespaceSelector" in p:
            namespace_ok = selects(p["namespaceSelector"], peer.namespace_labels)
        else:
            namespace_ok = peer.namespace == own_namespace
        if namespace_ok and selects(p.get("podSelector") or {}, peer.labels):
            return True
    return False


def _fqdn_matches(matches: list[dict], hostname: str | None) -> bool:
    if hostname is None:
        return False
    for m in matches:
        if "name" in m and m["name"] == hostname:
            return True
        if "pattern" in m:
            regex = "^" + re.escape(m["pattern"]).replace(r"\*", "[^.]+") + "$"
            if re.match(regex, hostname):
                return True
    return False


def _is_fqdn(policy: dict) -> bool:
    return (policy["apiVersion"].split("/")[0], policy["kind"]) == FQDN_KIND


def _network_policies(objects: Iterable[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy" or _is_fqdn(o)]


def egress_allowed(objects: Iterable[dict], pod: Pod, to: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether `pod` may open a connection to `to` on port/protocol."""
    applicable = [p for p in _network_policies(objects) if _applies(p, pod)
                  and (_is_fqdn(p) or "Egress" in policy_types(p))]
    if not applicable:
        return True
    for policy in applicable:
        for rule in policy["spec"].get("egress") or []:
            if not _port_matches(rule.get("ports"), port, protocol):
                continue
            if _is_fqdn(policy):
                if isinstance(to, Address) and _fqdn_matches(rule.get("matches") or [], to.hostname):
                    return True
            elif _peer_matches(rule.get("to"), to, pod.namespace):
                return True
    return False


def ingress_allowed(objects: Iterable[dict], pod: Pod, source: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether `source` may open a connection to `pod` on port/protocol."""
    applicable = [p for p in _network_policies(objects)
                  if not _is_fqdn(p) and _applies(p, pod) and "Ingress" in policy_types(p)]
    if not applicable:
        return True
    return any(_port_matches(rule.get("ports"), port, protocol) and _peer_matches(rule.get("from"), source, pod.namespace)
               for policy in applicable for rule in policy["spec"].get("ingress") or [])
