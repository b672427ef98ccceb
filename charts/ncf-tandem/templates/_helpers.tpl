{{/*
Names, labels, images and the small shared pieces. The Job body is in
_job.tpl, the command-line flags in _flags.tpl.
*/}}

{{/*
Expand the name of the chart.
*/}}
{{- define "ncf-tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 52 chars (not 63) because a Job's name is used for the
job-name label on its pods, and "-generator" is appended.
If release name contains chart name it will be used as a full name.
*/}}
{{- define "ncf-tandem.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "ncf-tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "ncf-tandem.labels" -}}
helm.sh/chart: {{ include "ncf-tandem.chart" . }}
{{ include "ncf-tandem.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ncf-tandem
{{- end }}

{{/*
Selector labels
*/}}
{{- define "ncf-tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ncf-tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
One component's labels: the common labels (or, with "selector" true, the
selector labels only, as pod templates carry them) and its
app.kubernetes.io/component. Components: generator, trainer, gcs-emulator,
test; ncf-status and the NetworkPolicies select pods by them.
Usage: include "ncf-tandem.componentLabels" (dict "root" $ "component" "trainer" ["selector" true])
*/}}
{{- define "ncf-tandem.componentLabels" -}}
{{- if .selector }}
{{- include "ncf-tandem.selectorLabels" .root }}
{{- else }}
{{- include "ncf-tandem.labels" .root }}
{{- end }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
A LabelSelector for the pods that run the programs (the Jobs' and the helm
test pod), which the NetworkPolicies constrain and the emulator serves.
*/}}
{{- define "ncf-tandem.podsSelector" -}}
matchLabels:
  {{- include "ncf-tandem.selectorLabels" . | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [generator, trainer, test]
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "ncf-tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ncf-tandem.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The helm test pod's own ServiceAccount: the only one whose token is mounted.
*/}}
{{- define "ncf-tandem.testServiceAccountName" -}}
{{- default (printf "%s-test" (include "ncf-tandem.fullname" .)) .Values.tests.serviceAccount.name }}
{{- end }}

{{/*
The JobSet's name. Its Jobs are named <name>-<replicatedJob>-<index> and an
Indexed Job's pods <job>-<podIndex>-<5 random>, which the JobSet webhook checks
against a 63-character DNS label: "-generator-0-NN-abcde" takes 21 (shards or
hosts up to 100).
*/}}
{{- define "ncf-tandem.jobsetName" -}}
{{- include "ncf-tandem.fullname" . | trunc 42 | trimSuffix "-" }}
{{- end }}

{{/*
"true" when several trainer pods train together (trainer.hosts > 1), else "".
Usage: if include "ncf-tandem.multiHostTrainer" $
*/}}
{{- define "ncf-tandem.multiHostTrainer" -}}
{{- if gt (int64 (default 1 .Values.trainer.hosts)) 1 }}true{{ end }}
{{- end }}

{{/*
--coordinator for trainer.hosts > 1: host 0's stable hostname and JAX's
coordinator port (trainer/hosts.py COORDINATOR_PORT). With DNS hostnames a
JobSet names pod i of Job j of a replicatedJob
<jobset>-<replicatedJob>-<j>-<i>, reachable as <hostname>.<subdomain> through
the headless Service it creates under the subdomain's name (JobSet v0.12.0:
the CRD's spec.network.enableDNSHostnames; createHeadlessSvcIfNecessary in
pkg/controllers/jobset_controller.go). jobset.yaml sets the subdomain to the
JobSet's name, JobSet's own default, made explicit here.
*/}}
{{- define "ncf-tandem.trainer.coordinator" -}}
{{- $jobset := include "ncf-tandem.jobsetName" . }}
{{- printf "%s-trainer-0-0.%s:8476" $jobset $jobset }}
{{- end }}

{{/*
An image reference; the tag defaults to the chart's appVersion.
Usage: include "ncf-tandem.image" (dict "root" $ "image" .Values.generator.image)
*/}}
{{- define "ncf-tandem.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{/*
The in-cluster GCS emulator's Service name and URL.
*/}}
{{- define "ncf-tandem.gcsEmulator.name" -}}
{{- printf "%s-gcs" (include "ncf-tandem.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ncf-tandem.gcsEmulator.url" -}}
{{- printf "http://%s:%d" (include "ncf-tandem.gcsEmulator.name" .) (int .Values.gcsEmulator.port) }}
{{- end }}

{{/*
The bucket of dataDir (gs://BUCKET/prefix); the emulator creates it at start.
*/}}
{{- define "ncf-tandem.bucket" -}}
{{- if not (hasPrefix "gs://" .Values.dataDir) }}
{{- fail "gcsEmulator.enabled needs a gs://bucket/prefix dataDir" }}
{{- end }}
{{- (urlParse .Values.dataDir).host }}
{{- end }}

{{/*
Exact resources: cpu and memory limits equal to their requests (Guaranteed
QoS; Kueue admits a workload on its requests, so a limit above them would let
it use more than was admitted), a limit without a request gives the request,
and devices (nvidia.com/gpu, google.com/tpu) go in both. A cpu or memory limit
that differs from its request is an error.
Usage: include "ncf-tandem.resources" (dict "resources" $res "devices" $dev "what" "trainer.resources")
Returns a ResourceRequirements as YAML (parse with fromYaml).
*/}}
{{- define "ncf-tandem.resources" -}}
{{- $requests := deepCopy (default dict .resources.requests) }}
{{- $limits := deepCopy (default dict .resources.limits) }}
{{- range $key := list "cpu" "memory" }}
{{- $request := index $requests $key }}
{{- $limit := index $limits $key }}
{{- if and (not (kindIs "invalid" $request)) (not (kindIs "invalid" $limit)) (ne (toString $request) (toString $limit)) }}
{{- fail (printf "%s: requests.%s (%v) and limits.%s (%v) must be equal: resources are exact (set the request only)" $.what $key $request $key $limit) }}
{{- end }}
{{- if not (kindIs "invalid" $request) }}
{{- $_ := set $limits $key $request }}
{{- else if not (kindIs "invalid" $limit) }}
{{- $_ := set $requests $key $limit }}
{{- end }}
{{- end }}
{{- range $key, $count := .devices }}
{{- $_ := set $requests $key (int64 $count) }}
{{- $_ := set $limits $key (int64 $count) }}
{{- end }}
{{- $out := dict }}
{{- with $requests }}{{ $_ := set $out "requests" . }}{{ end }}
{{- with $limits }}{{ $_ := set $out "limits" . }}{{ end }}
{{- with .resources.claims }}{{ $_ := set $out "claims" . }}{{ end }}
{{- toYaml $out }}
{{- end }}

{{/*
Environment both components and the test hook get: the writable scratch
volume as HOME and cache directories (the root filesystem is read-only), and
the emulator's address when the in-cluster emulator is on (protocol/storage.py
then turns off gcsfs's gRPC probe itself).
*/}}
{{- define "ncf-tandem.commonEnv" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/.matplotlib
- name: KERAS_HOME
  value: /tmp/.keras
{{- if .Values.gcsEmulator.enabled }}
- name: STORAGE_EMULATOR_HOST
  value: {{ include "ncf-tandem.gcsEmulator.url" . | quote }}
{{- end }}
{{- end }}

{{/*
Checkov (tests/test_scanners.py) findings the chart accepts, each with its
reason, as metadata annotations checkov reads (checkov.io/skipN: ID=reason).
Usage: include "ncf-tandem.checkovSkips" (list "CKV_K8S_43" "CKV_K8S_15")
*/}}
{{- define "ncf-tandem.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_43" "images are referenced by tag (the project's own are built from this repository, and kind loads them by tag, without a registry digest); image.tag takes TAG@sha256:DIGEST to pin one"
  "CKV_K8S_15" "tags are not reused, and images loaded into kind need pullPolicy Never; pullPolicy is a value"
  "CKV_K8S_38" "the helm test pod runs ncf-status, which reads this release's Jobs and pods through the API with a read-only Role; no other pod mounts a token"
  "CKV_K8S_8" "a run-to-completion test pod: there is nothing for a liveness probe to restart"
  "CKV_K8S_9" "a run-to-completion test pod: no Service sends it traffic"
}}
{{- range $i, $id := . }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (index $reasons $id) | quote }}
{{- end }}
{{- end }}

{{/*
An init container that waits until the emulator answers and its bucket
exists, so neither Job burns a retry on a connection error while the emulator
starts. It runs the component's own image (Python is there).
Usage: include "ncf-tandem.waitForEmulator" (dict "root" $ "component" $component "securityContext" $sc)
*/}}
{{- define "ncf-tandem.waitForEmulator" -}}
- name: wait-for-gcs-emulator
  image: {{ include "ncf-tandem.image" (dict "root" .root "image" .component.image) | quote }}
  imagePullPolicy: {{ .component.image.pullPolicy }}
  command: ["python", "-c"]
  args:
    - |
      import sys, time, urllib.request
      url = "{{ include "ncf-tandem.gcsEmulator.url" .root }}/storage/v1/b/{{ include "ncf-tandem.bucket" .root }}"
      for _ in range(150):
          try:
              with urllib.request.urlopen(url, timeout=5) as r:
                  if r.status == 200:
                      sys.exit(0)
          except OSError as e:
              print("waiting for the GCS emulator:", e, flush=True)
          time.sleep(2)
      sys.exit("the GCS emulator did not answer within 5 minutes: " + url)
  securityContext:
    {{- toYaml .securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
    limits:
      cpu: 50m
      memory: 64Mi
{{- end }}

{{/*
Spot placement for one component: the node label GKE puts on Spot nodes and
the toleration for the taint it may put on them.
*/}}
{{- define "ncf-tandem.spotNodeSelector" -}}
cloud.google.com/gke-spot: "true"
{{- end }}

{{- define "ncf-tandem.spotTolerations" -}}
- key: cloud.google.com/gke-spot
  operator: Equal
  value: "true"
  effect: NoSchedule
{{- end }}
