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
Command-line flags from values. Each spec is (list FLAG VALUE KIND) with KIND
one of int, float, string, bool, intlist. An unset value (null, "" or an empty
list) omits the flag, so the program's own default applies; false omits a bool
flag. Integers go through int64 because Helm reads every YAML number as a
float64, which would print 1048576 as 1.048576e+06.
Usage: include "ncf-tandem.flags" (list (list "--epochs" .epochs "int") ...)
Returns the flags as a YAML list (parse with fromYamlArray).
*/}}
{{- define "ncf-tandem.flags" -}}
{{- $args := list }}
{{- range . }}
{{- $flag := index . 0 }}
{{- $value := index . 1 }}
{{- $kind := index . 2 }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
{{- if eq $kind "bool" }}
{{- if $value }}{{ $args = append $args $flag }}{{ end }}
{{- else if eq $kind "int" }}
{{- $args = append $args (printf "%s=%d" $flag (int64 $value)) }}
{{- else if eq $kind "float" }}
{{- $args = append $args (printf "%s=%v" $flag (float64 $value)) }}
{{- else if eq $kind "intlist" }}
{{- if $value }}
{{- $items := list }}
{{- range $value }}{{ $items = append $items (int64 . | toString) }}{{ end }}
{{- $args = append $args (printf "%s=%s" $flag (join "," $items)) }}
{{- end }}
{{- else }}
{{- $args = append $args (printf "%s=%s" $flag (toString $value)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/*
Environment both components and the test hook get: the writable scratch
volume as HOME and cache directories (the root filesystem is read-only), and
the emulator's address when the in-cluster emulator is on.
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
# gcsfs otherwise probes for a gRPC (HNS) bucket and waits about 60 s per call.
- name: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
  value: "false"
{{- end }}
{{- end }}

{{/*
An init container that waits until the emulator answers and its bucket
exists, so neither Job burns a retry on a connection error while the emulator
starts. It runs the component's own image (Python is there).
Usage: include "ncf-tandem.waitForEmulator" (dict "root" $ "component" $component)
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
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 64Mi
{{- end }}

{{/*
One component's Job. The two Job templates compute what differs (arguments,
placement, resources) and hand it here, so both share every other field.
Usage: include "ncf-tandem.job" (dict "root" $ "name" "generator"
         "component" .Values.generator "args" $args "nodeSelector" $sel
         "tolerations" $tol "affinity" $aff "resources" $res "extraEnv" $env)
*/}}
{{- define "ncf-tandem.job" -}}
{{- $root := .root }}
{{- $c := .component }}
{{- $podSecurityContext := mergeOverwrite (deepCopy $root.Values.podSecurityContext) (deepCopy (default dict $c.podSecurityContext)) }}
{{- $securityContext := mergeOverwrite (deepCopy $root.Values.securityContext) (deepCopy (default dict $c.securityContext)) }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ printf "%s-%s" (include "ncf-tandem.fullname" $root) .name }}
  labels:
    {{- include "ncf-tandem.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  backoffLimit: {{ int64 $c.job.backoffLimit }}
  {{- with $c.job.activeDeadlineSeconds }}
  activeDeadlineSeconds: {{ int64 . }}
  {{- end }}
  {{- if not (kindIs "invalid" $c.job.ttlSecondsAfterFinished) }}
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
        {{- include "ncf-tandem.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $c.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      # podFailurePolicy requires Never: Kubernetes restarts a failed pod as a
      # new pod, counted by backoffLimit.
      restartPolicy: Never
      serviceAccountName: {{ include "ncf-tandem.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $podSecurityContext | nindent 8 }}
      {{- with .nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.terminationGracePeriodSeconds }}
      terminationGracePeriodSeconds: {{ int64 . }}
      {{- end }}
      {{- if $root.Values.gcsEmulator.enabled }}
      initContainers:
        {{- include "ncf-tandem.waitForEmulator" (dict "root" $root "component" $c "securityContext" $securityContext) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "ncf-tandem.image" (dict "root" $root "image" $c.image) | quote }}
          imagePullPolicy: {{ $c.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "ncf-tandem.commonEnv" $root | nindent 12 }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $c.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $securityContext | nindent 12 }}
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
