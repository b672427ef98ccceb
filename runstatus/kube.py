"""The two Jobs of a Helm release and their pods, read from the Kubernetes API.

The bucket says what the code thinks; the API says what happened to the processes
(OOMKilled, evicted, unschedulable for want of a GPU node, out of retries), which the
code cannot write down itself. Only `list` and `get` calls are made: this never changes
anything.

With the chart's `workload: jobset` the Jobs belong to a JobSet, which recreates both
when one fails (up to spec.failurePolicy.maxRestarts, unless a FailJobSet rule matches the
Job's failure reason): such a failed Job is RESTARTING, not FAILED, and the run goes on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.errors import first_line

COMPONENTS = ("generator", "trainer")
JOBSET_API = ("jobset.x-k8s.io", "v1alpha2", "jobsets")  # group, version, plural
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
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
    state: str  # COMPLETE, FAILED, RESTARTING (a JobSet recreates it), SUSPENDED, STARTING, RUNNING or PENDING
    active: int
    succeeded: int
    failed: int
    conditions: list[str] = field(default_factory=list)  # the true ones: "Failed: BackoffLimitExceeded: ..."
    pods: list[PodFacts] = field(default_factory=list)
    failure_reason: str | None = None  # the Failed condition's reason: BackoffLimitExceeded, DeadlineExceeded, ...
    jobset: str | None = None  # the JobSet that owns it, if any
    replicated_job: str | None = None  # its replicatedJob in that JobSet


@dataclass
class JobSetFacts:
    name: str
    state: str  # COMPLETED, FAILED, SUSPENDED or RUNNING; UNKNOWN when it could not be read
    restarts: int = 0
    max_restarts: int = 0
    conditions: list[str] = field(default_factory=list)
    # FailJobSet rules: (Job failure reasons, replicatedJobs they apply to; empty: all).
    fail_rules: list[tuple[list[str], list[str]]] = field(default_factory=list)
    error: str | None = None

    def fails_on(self, job: JobFacts) -> bool:
        """Whether the JobSet answers this failed Job by failing rather than restarting."""
        if self.state in ("FAILED", "COMPLETED") or self.restarts >= self.max_restarts:
            return True
        return any(job.failure_reason in reasons and (not targets or job.replicated_job in targets)
                   for reasons, targets in self.fail_rules)


@dataclass
class ReleaseFacts:
    namespace: str
    release: str
    jobs: list[JobFacts] = field(default_factory=list)
    jobset: JobSetFacts | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Whether Kubernetes says the run is over without success."""
        return (any(job.state == "FAILED" for job in self.jobs)
                or (self.jobset is not None and self.jobset.state == "FAILED"))

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
    owners = {job.jobset for job in facts.jobs if job.jobset}
    if owners:
        facts.jobset = read_jobset(client.CustomObjectsApi(api), namespace, min(owners))
        facts.jobs = judge_restarts(facts.jobs, facts.jobset)
    return facts


def read_jobset(api, namespace: str, name: str) -> JobSetFacts:
    """The JobSet `name`, or one in state UNKNOWN saying why it could not be read."""
    group, version, plural = JOBSET_API
    try:
        obj = api.get_namespaced_custom_object(group, version, namespace, plural, name,
                                               _request_timeout=REQUEST_TIMEOUT)
    except Exception as error:  # RBAC without jobsets, no CRD, network: the Jobs still show
        return JobSetFacts(name=name, state="UNKNOWN",
                           error=_describe_error(error, "get JobSets (needs RBAC get on jobsets.jobset.x-k8s.io)"))
    return describe_jobset(obj)


def describe_jobset(obj: dict) -> JobSetFacts:
    """A JobSet (as the API returns it, a dict) to the facts shown."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    policy = spec.get("failurePolicy") or {}
    true_conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    kinds = {c["type"] for c in true_conditions}
    state = next((s for kind, s in (("Completed", "COMPLETED"), ("Failed", "FAILED"), ("Suspended", "SUSPENDED"))
                  if kind in kinds), "RUNNING")
    rules = [(rule.get("onJobFailureReasons") or [], rule.get("targetReplicatedJobs") or [])
             for rule in policy.get("rules") or [] if rule.get("action") == "FailJobSet"]
    return JobSetFacts(
        name=obj["metadata"]["name"], state=state, restarts=status.get("restarts") or 0,
        max_restarts=policy.get("maxRestarts") or 0, fail_rules=rules,
        conditions=[": ".join(x for x in (c["type"], c.get("reason"), _short(c.get("message"))) if x)
                    for c in true_conditions if c["type"] in ("Completed", "Failed", "Suspended")],
    )


def judge_restarts(jobs: list[JobFacts], jobset: JobSetFacts) -> list[JobFacts]:
    """A failed Job that its JobSet will recreate is RESTARTING; an unreadable JobSet
    changes nothing (a failed Job stays FAILED: better a false alarm than a hung watch)."""
    if jobset.state == "UNKNOWN":
        return jobs
    for job in jobs:
        if job.state == "FAILED" and job.jobset == jobset.name and not jobset.fails_on(job):
            job.state = "RESTARTING"
    return jobs


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


def _describe_error(error: Exception,
                    forbidden: str = "list Jobs and pods in the namespace (needs RBAC get/list on jobs.batch and pods)") -> str:
    status = getattr(error, "status", None)
    if status == 403:
        return f"forbidden: this identity may not {forbidden}"
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
    labels = job.metadata.labels or {}
    failure = next((c.reason for c in true_conditions if c.type == "Failed"), None)
    return JobFacts(
        name=job.metadata.name, component=_component(job), state=state,
        active=status.active or 0, succeeded=status.succeeded or 0, failed=status.failed or 0,
        conditions=[": ".join(x for x in (c.type, c.reason, _short(c.message)) if x) for c in true_conditions],
        pods=pods, failure_reason=failure,
        jobset=labels.get(JOBSET_NAME_LABEL), replicated_job=labels.get(REPLICATED_JOB_LABEL),
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
    lines += _jobset_lines(facts.jobset)
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


def _jobset_lines(jobset: JobSetFacts | None) -> list[str]:
    if jobset is None:
        return []
    if jobset.error:
        return [f"  JobSet {jobset.name}: cannot read it ({jobset.error}); a failed Job counts as final"]
    lines = [f"  JobSet {jobset.name}: {jobset.state}, {jobset.restarts} of {jobset.max_restarts} restarts used"]
    return lines + [f"    {condition}" for condition in jobset.conditions]


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
