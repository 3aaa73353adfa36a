{{/* Names: the release's objects are <fullname>..., at most 63 characters. */}}
{{- define "factotum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Room is left for "-headless" and "-etcd" and the pods' "-N" (DNS labels: 63). */}}
{{- define "factotum.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "factotum.headless" -}}
{{- printf "%s-headless" (include "factotum.fullname" .) -}}
{{- end -}}

{{- define "factotum.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "factotum.labels" -}}
helm.sh/chart: {{ include "factotum.chart" . }}
app.kubernetes.io/name: {{ include "factotum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of the coordinators (immutable in a StatefulSet: keep them short). */}}
{{- define "factotum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "factotum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{- define "factotum.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "factotum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "factotum.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "factotum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dev-etcd
{{- end -}}

{{- define "factotum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "factotum.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "factotum.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "factotum.tlsSecret" -}}
{{- default (printf "%s-tls" (include "factotum.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* "https" unless insecure. */}}
{{- define "factotum.scheme" -}}
{{- if .Values.insecure -}}http{{- else -}}https{{- end -}}
{{- end -}}

{{/* The VIP's in-cluster URL. */}}
{{- define "factotum.vipURL" -}}
{{- printf "%s://%s.%s.svc:%d" (include "factotum.scheme" .) (include "factotum.fullname" .) .Release.Namespace (int .Values.coordinator.grpcPort) -}}
{{- end -}}

{{/* --advertise, before Kubernetes expands $(POD_NAME) and $(POD_INDEX). */}}
{{- define "factotum.advertise" -}}
{{- if .Values.coordinator.advertise -}}
{{- tpl .Values.coordinator.advertise . -}}
{{- else -}}
{{- printf "%s://$(POD_NAME).%s.%s.svc.%s:%d" (include "factotum.scheme" .) (include "factotum.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.coordinator.grpcPort) -}}
{{- end -}}
{{- end -}}

{{/* The etcd client URLs, comma-separated; fails naming the value when there are none. */}}
{{- define "factotum.etcdEndpoints" -}}
{{- if .Values.etcd.dev.enabled -}}
{{- if .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints and etcd.dev.enabled are exclusive: the dev etcd is for trying the chart out; give your etcd's client URLs in etcd.endpoints and leave etcd.dev.enabled false" -}}
{{- end -}}
{{- printf "http://%s-etcd.%s.svc:2379" (include "factotum.fullname" .) .Release.Namespace -}}
{{- else if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is required: the coordinators keep their state in an external etcd (e.g. --set 'etcd.endpoints={https://etcd-0.etcd:2379}'); for a throwaway single-node etcd set etcd.dev.enabled=true instead" -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express; included by the StatefulSet. */}}
{{- define "factotum.validate" -}}
{{- if .Values.externalAccess.enabled -}}
{{- if not .Values.coordinator.advertise -}}
{{- fail "coordinator.advertise is required with externalAccess.enabled: the address agents outside the cluster reach each coordinator at, e.g. https://$(POD_NAME).factotum.example.com:7400 (README.md, \"Agents outside the cluster\")" -}}
{{- end -}}
{{- if and (eq .Values.externalAccess.type "NodePort") (lt (len .Values.externalAccess.nodePorts) (int .Values.replicas)) -}}
{{- fail (printf "externalAccess.nodePorts needs one node port per coordinator (replicas: %d, given: %d)" (int .Values.replicas) (len .Values.externalAccess.nodePorts)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.agent.enabled (not .Values.insecure) (not .Values.agent.tls.existingSecret) -}}
{{- fail "agent.tls.existingSecret is required with agent.enabled (TLS is on): a Secret with ca.crt to verify the coordinators and tls.crt/tls.key naming the agent" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled .Values.tokens.existingSecret (not .Values.serviceMonitor.tokenSecret.name) -}}
{{- fail "serviceMonitor.tokenSecret.name is required with tokens.existingSecret: /metrics needs a token with the read scope" -}}
{{- end -}}
{{- end -}}

{{/* The HTTP probe scheme. */}}
{{- define "factotum.probeScheme" -}}
{{- if .Values.insecure -}}HTTP{{- else -}}HTTPS{{- end -}}
{{- end -}}
