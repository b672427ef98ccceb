{{/*
A component's command-line flags from its values, one per row of its flag
table ("ncf-tandem.<component>.flagTable" in _flag_table.tpl, generated from
the program's own table by scripts/chart_flags.py). A row is
[FLAG, VALUE, KIND]: VALUE a dotted path under the component's values, KIND
one of int, number, string, bool, intlist. An unset value (null, "" or an
empty list) omits the flag, so the program's own default applies; false
omits a bool flag. Integers go through int64 because Helm reads every YAML
number as a float64, which would print 1048576 as 1.048576e+06; numbers are
printed as integers when whole (3600, not 3.6e+03) and as decimals
otherwise (0.5, 1e-06).
Usage: include "ncf-tandem.flags" (dict "component" "trainer" "values" .Values.trainer)
Returns the flags as a YAML list (parse with fromYamlArray).
*/}}
{{- define "ncf-tandem.flags" -}}
{{- $args := list }}
{{- range include (printf "ncf-tandem.%s.flagTable" .component) . | fromYamlArray }}
{{- $flag := index . 0 }}
{{- $kind := index . 2 }}
{{- $value := $.values }}
{{- range splitList "." (index . 1) }}
{{- $value = index $value . }}
{{- end }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
{{- if eq $kind "bool" }}
{{- if $value }}{{ $args = append $args $flag }}{{ end }}
{{- else if eq $kind "int" }}
{{- $args = append $args (printf "%s=%d" $flag (int64 $value)) }}
{{- else if eq $kind "number" }}
{{- if eq (float64 $value) (float64 (int64 $value)) }}
{{- $args = append $args (printf "%s=%d" $flag (int64 $value)) }}
{{- else }}
{{- $args = append $args (printf "%s=%v" $flag (float64 $value)) }}
{{- end }}
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
