"""The two Jobs of a Helm release and their pods, read from the Kubernetes API.

The bucket says what the code thinks; the API says what happened to the processes
(OOMKilled, evicted, unschedulable for want of a GPU node, out of retries), which the
code cannot write down itself. Only `list` calls are made: this never changes anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.errors import first_line

COMPONENTS = ("generator", "trainer")
REQUEST_TIMEOUT = (5, 15)  # connect, read (seconds): a status tool must not hang
MAX_PODS_SHOWN = 4  # per Job; with restartPolicy Never every retry is a new pod


@dataclass
class ContainerFacts:
    name: str
    ready: bool
    restarts: int
    state: str  # e.g. "running", "waiting: CrashLoopBackOff", "terminated: OOMKilled (exit 137)"
    last_termination: str | None = None


@dataclass
class PodFacts:
    name: str
    phase: str
    node: str | None
    created: str | None
    reason: str | None = None  # why the pod is not running: Evicted, Unschedulable, ...
    containers: list[ContainerFacts] = field(default_factory=list)


@dataclass
class JobFacts:
    name: str
    component: str
    state: str  # COMPLETE, FAILED, SUSPENDED, STARTING, RUNNING or PENDING
    active: int
    succeeded: int
    failed: int
    conditions: list[str] = field(default_factory=list)  # the true ones: "Failed: BackoffLimitExceeded: ..."
    pods: list[PodFacts] = field(default_factory=list)


@dataclass
class ReleaseFacts:
    namespace: str
    release: str
    jobs: list[JobFacts] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def selector(release: str) -> str:
    return f"app.kubernetes.io/instance={release},app.kubernetes.io/component in ({','.join(COMPONENTS)})"


def read_release(namespace: str, release: str, kubeconfig: str | None = None) -> ReleaseFacts:
    """Lists the release's Jobs and pods; any failure becomes `error`, never an exception:
    the bucket's half of the screen is still worth showing."""
    facts = ReleaseFacts(namespace=namespace, release=release)
    try:
        from kubernetes import client
    except ImportError:
        facts.error = "the kubernetes client is not installed (pip install 'ncf-tandem[k8s]')"
        return facts
    try:
        api = _api_client(kubeconfig)
        jobs = client.BatchV1Api(api).list_namespaced_job(
            namespace, label_selector=selector(release), _request_timeout=REQUEST_TIMEOUT)
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=selector(release), _request_timeout=REQUEST_TIMEOUT)
    except Exception as error:  # config, network, RBAC: all reported the same way
        facts.error = _describe_error(error)
        return facts
    facts.jobs = describe_jobs(jobs.items, pods.items)
    return facts


def _api_client(kubeconfig: str | None):
    """A kubeconfig (KUBECONFIG or ~/.kube/config) first, else the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (config.ConfigException, FileNotFoundError) as kube_error:
        if kubeconfig:
            raise
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as pod_error:
            # In a pod whose service account token is not mounted (the chart's default),
            # this says so rather than blaming the kubeconfig alone.
            raise config.ConfigException(
                f"no kubeconfig ({first_line(kube_error, 200)}) and no in-cluster access "
                f"({first_line(pod_error, 200)})") from None
    return client.ApiClient(configuration)


def _describe_error(error: Exception) -> str:
    status = getattr(error, "status", None)
    if status == 403:
        return ("forbidden: this identity may not list Jobs and pods in the namespace "
                "(needs RBAC get/list on jobs.batch and pods)")
    if status is not None:
        return f"the Kubernetes API answered {status} {getattr(error, 'reason', '')}".strip()
    return f"cannot reach the Kubernetes API: {first_line(error)}"


def describe_jobs(jobs: list, pods: list) -> list[JobFacts]:
    """Job and pod models (kubernetes.client V1Job, V1Pod) to the facts shown, generator first."""
    facts = []
    for job in sorted(jobs, key=lambda j: (_component(j), j.metadata.name)):
        own = [p for p in pods if _owned_by(p, job)]
        own.sort(key=_created_s, reverse=True)  # newest first: the current attempt
        facts.append(_job_facts(job, [_pod_facts(p) for p in own]))
    return facts


def _created_s(obj) -> float:
    created = obj.metadata.creation_timestamp
    return created.timestamp() if created else 0.0


def _component(obj) -> str:
    labels = obj.metadata.labels or {}
    return labels.get("app.kubernetes.io/component", "?")


def _owned_by(pod, job) -> bool:
    references = pod.metadata.owner_references or []
    if any(r.kind == "Job" and r.uid == job.metadata.uid for r in references):
        return True
    labels = pod.metadata.labels or {}
    return labels.get("batch.kubernetes.io/job-name", labels.get("job-name")) == job.metadata.name


def _job_facts(job, pods: list[PodFacts]) -> JobFacts:
    status = job.status
    true_conditions = [c for c in (status.conditions or []) if c.status == "True"]
    kinds = {c.type for c in true_conditions}
    # Kubernetes >= 1.31 sets FailureTarget / SuccessCriteriaMet before the final
    # condition, with the same reason and message: once final, they only repeat it.
    hidden = {"FailureTarget"} if "Failed" in kinds else set()
    hidden |= {"SuccessCriteriaMet"} if "Complete" in kinds else set()
    true_conditions = [c for c in true_conditions if c.type not in hidden]
    if "Complete" in kinds:
        state = "COMPLETE"
    elif "Failed" in kinds:
        state = "FAILED"
    elif "Suspended" in kinds:
        state = "SUSPENDED"
    elif status.active and status.ready == 0:
        state = "STARTING"  # a pod exists but is not ready: scheduling, pulling, initializing
    elif status.active:
        state = "RUNNING"
    else:
        state = "PENDING"
    return JobFacts(
        name=job.metadata.name, component=_component(job), state=state,
        active=status.active or 0, succeeded=status.succeeded or 0, failed=status.failed or 0,
        conditions=[": ".join(x for x in (c.type, c.reason, _short(c.message)) if x) for c in true_conditions],
        pods=pods,
    )


def _pod_facts(pod) -> PodFacts:
    status = pod.status
    reason = status.reason and ": ".join(x for x in (status.reason, _short(status.message)) if x)
    for condition in status.conditions or []:
        # Unschedulable (no GPU node yet) and DisruptionTarget (Spot preemption, eviction)
        # are the usual reasons a pod of this chart is not where it should be.
        if (condition.type == "PodScheduled" and condition.status == "False") or (
                condition.type == "DisruptionTarget" and condition.status == "True"):
            reason = ": ".join(x for x in (condition.reason, _short(condition.message)) if x)
    containers = [_container_facts(c, "init:") for c in status.init_container_statuses or []
                  if not _finished_ok(c)]
    containers += [_container_facts(c) for c in status.container_statuses or []]
    created = pod.metadata.creation_timestamp
    return PodFacts(name=pod.metadata.name, phase=status.phase or "Unknown", node=pod.spec.node_name,
                    created=created.isoformat() if created else None, reason=reason, containers=containers)


def _finished_ok(container) -> bool:
    terminated = container.state and container.state.terminated
    return bool(terminated and terminated.exit_code == 0)


def _container_facts(container, prefix: str = "") -> ContainerFacts:
    last = container.last_state and container.last_state.terminated
    return ContainerFacts(
        name=prefix + container.name, ready=bool(container.ready), restarts=container.restart_count or 0,
        state=_state(container.state),
        last_termination=_terminated(last) if last else None,
    )


def _state(state) -> str:
    if state is None:
        return "unknown"
    if state.terminated:
        return "terminated: " + _terminated(state.terminated)
    if state.waiting:
        return "waiting: " + ": ".join(x for x in (state.waiting.reason, _short(state.waiting.message)) if x)
    return "running"


def _terminated(terminated) -> str:
    text = f"{terminated.reason or 'terminated'} (exit {terminated.exit_code})"
    if terminated.finished_at:
        text += f" at {terminated.finished_at:%H:%M:%S %Z}".rstrip()
    return text


def _short(message: str | None, limit: int = 160) -> str | None:
    if not message:
        return None
    line = message.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def render_release(facts: ReleaseFacts) -> list[str]:
    lines = [f"Kubernetes namespace {facts.namespace}, release {facts.release}"]
    if facts.error:
        return lines + [f"  {facts.error}"]
    found = {job.component for job in facts.jobs}
    for component in COMPONENTS:
        if component not in found:
            lines.append(f"  {component}: no Job (selector {selector(facts.release)})")
    for job in facts.jobs:
        lines.append(f"  {job.component} Job {job.name}: {job.state}, "
                     f"{job.active} active, {job.succeeded} succeeded, {job.failed} failed pods")
        lines += [f"    {condition}" for condition in job.conditions]
        for pod in job.pods[:MAX_PODS_SHOWN]:
            lines += _pod_lines(pod)
        if len(job.pods) > MAX_PODS_SHOWN:
            lines.append(f"    ... {len(job.pods) - MAX_PODS_SHOWN} older pods")
    return lines


def _pod_lines(pod: PodFacts) -> list[str]:
    where = f" on {pod.node}" if pod.node else ""
    lines = [f"    pod {pod.name}: {pod.phase}{where}" + (f", {pod.reason}" if pod.reason else "")]
    for c in pod.containers:
        text = f"      {c.name}: {c.state}"
        if c.restarts:
            text += f", {c.restarts} restarts"
        if c.last_termination:
            text += f", last {c.last_termination}"
        lines.append(text)
    return lines
