{{/*
The two components' Jobs. What differs between them (arguments, placement,
resources) is computed by "ncf-tandem.generator.pod" and
"ncf-tandem.trainer.pod"; "ncf-tandem.jobSpec" turns either into a Job spec,
used as is by the Jobs (job-generator.yaml, job-trainer.yaml) and as the
replicatedJobs' templates of the JobSet (jobset.yaml).
*/}}

{{/*
The generator: CPU only. It takes everything about the data from the
trainer's command.json, so its only flags are where the run lives and its own
resources (workers, timeouts, preprocessing cache, parts, uploads): rows of
its flag table (_flag_table.tpl), as the trainer's. It never gets an
accelerator's node selector, toleration or resource.
Usage: include "ncf-tandem.generator.pod" $ | fromYaml
*/}}
{{- define "ncf-tandem.generator.pod" -}}
{{- $g := .Values.generator }}
{{- $args := list (printf "--data-dir=%s" .Values.dataDir) }}
{{- $args = concat $args (include "ncf-tandem.flags" (dict "component" "generator" "values" $g) | fromYamlArray) }}
{{- if $g.args }}
{{- $args = $g.args }}
{{- end }}
{{- $args = concat $args $g.extraArgs }}

{{- $nodeSelector := dict }}
{{- $tolerations := list }}
{{- if $g.spot }}
{{- $nodeSelector = include "ncf-tandem.spotNodeSelector" . | fromYaml }}
{{- $tolerations = include "ncf-tandem.spotTolerations" . | fromYamlArray }}
{{- end }}
{{- $nodeSelector = mergeOverwrite $nodeSelector (deepCopy $g.nodeSelector) }}
{{- $tolerations = concat $tolerations $g.tolerations }}

{{- $affinity := deepCopy $g.affinity }}
{{- if and $g.avoidAcceleratorNodes (not $affinity.nodeAffinity) }}
{{- /* GKE taints accelerator nodes, but not every cluster does: keep the CPU
       work off GPU and TPU nodes explicitly. */ -}}
{{- $_ := set $affinity "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" (list (dict "matchExpressions" (list
      (dict "key" "cloud.google.com/gke-accelerator" "operator" "DoesNotExist")
      (dict "key" "cloud.google.com/gke-tpu-accelerator" "operator" "DoesNotExist")
    ))))) }}
{{- end }}
{{- toYaml (dict
      "args" $args
      "nodeSelector" $nodeSelector
      "tolerations" $tolerations
      "affinity" $affinity
      "resources" (include "ncf-tandem.resources" (dict "resources" $g.resources "devices" dict "what" "generator.resources") | fromYaml)
      "extraEnv" list) }}
{{- end }}

{{/*
The trainer: its flags are the rows of its flag table (_flag_table.tpl), as
the generator's, and the accelerator preset adds GKE's node labels, taint
tolerations and device resources for the trainer only.
Usage: include "ncf-tandem.trainer.pod" $ | fromYaml
*/}}
{{- define "ncf-tandem.trainer.pod" -}}
{{- $t := deepCopy .Values.trainer }}
{{- /* --accelerator follows the preset unless set: the device asked for must be there. */ -}}
{{- if not $t.accelerator.require }}
{{- $_ := set $t.accelerator "require" (get (dict "nvidia" "gpu" "tpu" "tpu") $t.accelerator.preset) }}
{{- end }}
{{- $args := list (printf "--data-dir=%s" .Values.dataDir) }}
{{- $args = concat $args (include "ncf-tandem.flags" (dict "component" "trainer" "values" $t) | fromYamlArray) }}
{{- if and (include "ncf-tandem.multiHostTrainer" .) (ne $t.accelerator.preset "tpu") }}
{{- /* Several hosts: JAX's coordinator is host 0, at its stable JobSet hostname
       (--host-index comes from JOB_COMPLETION_INDEX). On a TPU slice GKE injects
       TPU_WORKER_HOSTNAMES, whose first entry is the trainer's default. */ -}}
{{- $args = append $args (printf "--coordinator=%s" (include "ncf-tandem.trainer.coordinator" .)) }}
{{- end }}
{{- if $t.args }}
{{- $args = $t.args }}
{{- end }}
{{- $args = concat $args $t.extraArgs }}

{{- /* Placement and devices from the accelerator preset. */ -}}
{{- $acc := $t.accelerator }}
{{- $nodeSelector := dict }}
{{- $tolerations := list }}
{{- $devices := dict }}
{{- $extraEnv := list }}
{{- if eq $acc.preset "nvidia" }}
{{- $_ := set $nodeSelector "cloud.google.com/gke-accelerator" $acc.nvidia.type }}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
{{- $_ := set $devices "nvidia.com/gpu" (int64 $acc.nvidia.count) }}
{{- /* GKE installs the driver (libcuda) under /usr/local/nvidia. */ -}}
{{- $extraEnv = append $extraEnv (dict "name" "LD_LIBRARY_PATH" "value" "/usr/local/nvidia/lib64") }}
{{- else if eq $acc.preset "tpu" }}
{{- $_ := set $nodeSelector "cloud.google.com/gke-tpu-accelerator" $acc.tpu.type }}
{{- $_ := set $nodeSelector "cloud.google.com/gke-tpu-topology" $acc.tpu.topology }}
{{- $tolerations = append $tolerations (dict "key" "google.com/tpu" "operator" "Exists" "effect" "NoSchedule") }}
{{- $_ := set $devices "google.com/tpu" (int64 $acc.tpu.count) }}
{{- include "ncf-tandem.trainer.checkTpuHosts" $t }}
{{- end }}
{{- if $t.spot }}
{{- $nodeSelector = mergeOverwrite $nodeSelector (include "ncf-tandem.spotNodeSelector" . | fromYaml) }}
{{- $tolerations = concat $tolerations (include "ncf-tandem.spotTolerations" . | fromYamlArray) }}
{{- end }}
{{- $nodeSelector = mergeOverwrite $nodeSelector (deepCopy $t.nodeSelector) }}
{{- $tolerations = concat $tolerations $t.tolerations }}
{{- toYaml (dict
      "args" $args
      "nodeSelector" $nodeSelector
      "tolerations" $tolerations
      "affinity" $t.affinity
      "resources" (include "ncf-tandem.resources" (dict "resources" $t.resources "devices" $devices "what" "trainer.resources") | fromYaml)
      "extraEnv" $extraEnv) }}
{{- end }}

{{/*
A TPU slice has one trainer pod per host, each with every chip of its host:
the topology's chips must be trainer.hosts x tpu.count (v5e 4x4: 4 hosts of 4).
Usage: include "ncf-tandem.trainer.checkTpuHosts" .Values.trainer
*/}}
{{- define "ncf-tandem.trainer.checkTpuHosts" -}}
{{- $tpu := .accelerator.tpu }}
{{- $chips := 1 }}
{{- range splitList "x" $tpu.topology }}
{{- $chips = mul $chips (int64 .) }}
{{- end }}
{{- $hosts := int64 (default 1 .hosts) }}
{{- if ne (int64 $chips) (mul $hosts (int64 $tpu.count)) }}
{{- fail (printf "trainer.accelerator.tpu: topology %s has %d chips, but trainer.hosts (%d) x tpu.count (%d) is %d: expected one trainer pod per host of the slice, each with all of its chips" $tpu.topology (int64 $chips) $hosts (int64 $tpu.count) (mul $hosts (int64 $tpu.count))) }}
{{- end }}
{{- end }}

{{/*
Annotations of a component's Job (or JobSet template): the checkov findings
accepted for it, with their reasons.
*/}}
{{- define "ncf-tandem.jobAnnotations" -}}
{{- include "ncf-tandem.checkovSkips" (list "CKV_K8S_43" "CKV_K8S_15") }}
{{- end }}

{{/*
One component's Job spec: retries, the exit code 2 rule, its pod template.
Usage: include "ncf-tandem.jobSpec" (dict "root" $ "name" "generator" ["inJobSet" true])
In a JobSet the Jobs have no ttlSecondsAfterFinished (the JobSet's own
applies) and no suspend (the JobSet is what Kueue suspends).
*/}}
{{- define "ncf-tandem.jobSpec" -}}
{{- $root := .root }}
{{- $c := index $root.Values .name }}
{{- $pod := include (printf "ncf-tandem.%s.pod" .name) $root | fromYaml }}
{{- $resources := default dict $pod.resources }}
{{- if and $c.scratch.sizeLimit (ne $c.scratch.medium "Memory") }}
{{- /* A /tmp on disk is ephemeral storage: request what it may hold, so the
       pod lands where it fits (GKE Autopilot would give it 1Gi and evict). */ -}}
{{- $requests := default dict $resources.requests }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" $c.scratch.sizeLimit }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- end }}
{{- $podSecurityContext := mergeOverwrite (deepCopy $root.Values.podSecurityContext) (deepCopy (default dict $c.podSecurityContext)) }}
{{- $securityContext := mergeOverwrite (deepCopy $root.Values.securityContext) (deepCopy (default dict $c.securityContext)) }}
{{- if and $root.Values.kueue.queueName (not .inJobSet) }}
# Kueue starts it once admitted.
suspend: true
{{- end }}
{{- /* The generator's shards or the trainer's hosts: one pod each. */ -}}
{{- $pods := int64 (default 1 (get (dict "generator" $c.shards "trainer" $c.hosts) .name)) }}
{{- if gt $pods 1 }}
{{- if eq .name "generator" }}
# One pod per index: pod i makes the slices s with s mod {{ $pods }} = i (its
# --shard is JOB_COMPLETION_INDEX). A failed pod is recreated for its index
# alone, up to backoffLimitPerIndex times; the Job fails only when one index
# runs out of them, so the other pods (and a JobSet's trainer) keep running.
{{- else }}
# One pod per host: pod i is trainer host i (--host-index from
# JOB_COMPLETION_INDEX), with the stable hostname <job>-<i> in the JobSet. A
# failed pod is recreated for its index alone, up to backoffLimitPerIndex
# times, with the same hostname; the other hosts' collectives fail with it,
# they exit and are recreated too, and all resume from the last checkpoint.
# The Job does not fail, so the JobSet restarts nothing: the generator runs on.
# An index out of retries fails the Job at once (maxFailedIndexes 0): the
# other hosts cannot train without it.
{{- end }}
completionMode: Indexed
completions: {{ $pods }}
parallelism: {{ $pods }}
backoffLimitPerIndex: {{ int64 $c.job.backoffLimit }}
{{- if eq .name "trainer" }}
maxFailedIndexes: 0
{{- end }}
{{- else }}
backoffLimit: {{ int64 $c.job.backoffLimit }}
{{- end }}
{{- with $c.job.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ int64 . }}
{{- end }}
{{- if and (not .inJobSet) (not (kindIs "invalid" $c.job.ttlSecondsAfterFinished)) }}
ttlSecondsAfterFinished: {{ int64 $c.job.ttlSecondsAfterFinished }}
{{- end }}
{{- if or $c.job.failJobOnExitCodes $c.job.ignoreDisruptions }}
podFailurePolicy:
  rules:
    {{- with $c.job.failJobOnExitCodes }}
    # Exit code 2 is invalid input or configuration: a retry cannot fix it.
    - action: FailJob
      onExitCodes:
        containerName: {{ $.name }}
        operator: In
        values:
          {{- range . }}
          - {{ int64 . }}
          {{- end }}
    {{- end }}
    {{- if $c.job.ignoreDisruptions }}
    # Preemption (Spot), node drains and evictions do not count against
    # backoffLimit: the restarted pod resumes where the last one stopped.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    {{- end }}
{{- end }}
template:
  metadata:
    labels:
      {{- include "ncf-tandem.componentLabels" (dict "root" $root "component" .name "selector" true) | nindent 6 }}
      {{- with $c.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $c.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    # podFailurePolicy requires Never: Kubernetes restarts a failed pod as a
    # new pod, counted by backoffLimit.
    restartPolicy: Never
    serviceAccountName: {{ include "ncf-tandem.serviceAccountName" $root }}
    automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
    {{- with $root.Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $podSecurityContext | nindent 6 }}
    {{- with $pod.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $pod.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $pod.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $c.terminationGracePeriodSeconds }}
    terminationGracePeriodSeconds: {{ int64 . }}
    {{- end }}
    {{- if $root.Values.gcsEmulator.enabled }}
    initContainers:
      {{- include "ncf-tandem.waitForEmulator" (dict "root" $root "component" $c "securityContext" $securityContext) | nindent 6 }}
    {{- end }}
    containers:
      - name: {{ .name }}
        image: {{ include "ncf-tandem.image" (dict "root" $root "image" $c.image) | quote }}
        imagePullPolicy: {{ $c.image.pullPolicy }}
        args:
          {{- toYaml $pod.args | nindent 10 }}
        env:
          {{- include "ncf-tandem.commonEnv" $root | nindent 10 }}
          {{- with $pod.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          {{- with $c.env }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        {{- with $resources }}
        resources:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        securityContext:
          {{- toYaml $securityContext | nindent 10 }}
        volumeMounts:
          # The root filesystem is read-only; /tmp is the scratch space.
          - name: scratch
            mountPath: /tmp
    volumes:
      - name: scratch
        emptyDir:
          {{- with $c.scratch.medium }}
          medium: {{ . }}
          {{- end }}
          {{- with $c.scratch.sizeLimit }}
          sizeLimit: {{ . }}
          {{- end }}
{{- end }}

{{/*
One component's Job (workload: jobs).
Usage: include "ncf-tandem.job" (dict "root" $ "name" "generator")
*/}}
{{- define "ncf-tandem.job" -}}
{{- $root := .root }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ printf "%s-%s" (include "ncf-tandem.fullname" $root) .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ncf-tandem.componentLabels" (dict "root" $root "component" .name) | nindent 4 }}
    {{- with $root.Values.kueue.queueName }}
    kueue.x-k8s.io/queue-name: {{ . }}
    {{- end }}
  annotations:
    {{- include "ncf-tandem.jobAnnotations" $root | nindent 4 }}
spec:
  {{- include "ncf-tandem.jobSpec" (dict "root" $root "name" .name) | nindent 2 }}
{{- end }}
