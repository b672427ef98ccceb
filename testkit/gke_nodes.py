"""What a GKE Standard node of a given machine type leaves for pods (its allocatable), per
GKE's "Standard cluster architecture: node allocatable resources" page:

- CPU reserved: 6% of the first core, 1% of the next, 0.5% of the next 2, 0.25% of every
  core above 4;
- memory reserved: 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the
  next 112, 2% of everything above 128 GiB; plus 100 MiB for kubelet's eviction threshold;
- and a margin for GKE's own DaemonSets on every node (kube-proxy, fluentbit, the metadata
  server, CSI and network agents; on GPU nodes the device plugin), which the formula does
  not count: 500m CPU and 1 GiB, above what those request on current GKE versions.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2

# (vCPUs, memory GiB) from Compute Engine's machine type tables (their "GB" are GiB).
MACHINES = {
    "n2-standard-8": (8, 32),
    "n2-standard-16": (16, 64),
    "g2-standard-4": (4, 16),  # one L4
    "g2-standard-8": (8, 32),  # one L4
    "a2-ultragpu-1g": (12, 170),  # one A100 80GB
    "a3-highgpu-8g": (208, 1872),  # eight H100 80GB
    "ct5lp-hightpu-1t": (24, 48),  # TPU v5e, 1 chip
    "ct5lp-hightpu-4t": (112, 192),  # TPU v5e, 4 chips
}

CPU_TIERS = [(1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025)]  # (cores, share reserved)
MEMORY_TIERS = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]  # (GiB, share)
EVICTION_THRESHOLD = 100 * MIB
DAEMONSET_CPU_MILLI = 500
DAEMONSET_MEMORY = 1 * GIB


def _tiered(amount: float, tiers: list[tuple[float, float]]) -> float:
    reserved, left = 0.0, amount
    for size, share in tiers:
        part = min(left, size)
        reserved += part * share
        left -= part
        if left <= 0:
            break
    return reserved


def reserved_cpu_milli(cores: int) -> float:
    return _tiered(cores, CPU_TIERS) * 1000


def reserved_memory_bytes(memory_gib: float) -> float:
    return _tiered(memory_gib, MEMORY_TIERS) * GIB + EVICTION_THRESHOLD


@dataclass(frozen=True)
class Room:
    """What pods of ours may request on one node: allocatable less the DaemonSet margin."""

    cpu_milli: float
    memory_bytes: float


def room(machine_type: str) -> Room:
    cores, memory_gib = MACHINES[machine_type]
    return Room(cpu_milli=cores * 1000 - reserved_cpu_milli(cores) - DAEMONSET_CPU_MILLI,
                memory_bytes=memory_gib * GIB - reserved_memory_bytes(memory_gib) - DAEMONSET_MEMORY)


_SUFFIXES = {"Ki": 1024, "Mi": MIB, "Gi": GIB, "Ti": 1024**4, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("7", "500m", "24Gi", 1) as a plain number (cores, bytes)."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)
