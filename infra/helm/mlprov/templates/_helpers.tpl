{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "mlprov.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.controller" -}}{{ include "mlprov.fullname" . }}-controller{{- end -}}
{{- define "mlprov.mlflow" -}}{{ include "mlprov.fullname" . }}-mlflow{{- end -}}

{{/* Labels: app.kubernetes.io/* on everything; selectors use name + instance + component. */}}
{{- define "mlprov.labels" -}}
app.kubernetes.io/name: mlprov
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mlprov.selector" -}}
app.kubernetes.io/name: mlprov
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: repository@digest, or repository:tag when no digest is given (dev). */}}
{{- define "mlprov.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else if .root.Values.global.requireDigests -}}
{{- fail (printf "global.requireDigests: images.%s.digest is empty" .name) -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (required (printf "images.%s.tag or digest" .name) $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.mlflowImage" -}}
{{- if .Values.images.mlflow.repository -}}
{{- include "mlprov.image" (dict "image" .Values.images.mlflow "name" "mlflow" "root" .) -}}
{{- else -}}
{{- include "mlprov.image" (dict "image" .Values.images.controller "name" "controller" "root" .) -}}
{{- end -}}
{{- end -}}

{{/* A plain image string (operator CR images); digests required in prod. */}}
{{- define "mlprov.plainImage" -}}
{{- if and .root.Values.global.requireDigests (not (contains "@sha256:" .image)) -}}
{{- fail (printf "global.requireDigests: %s image %q is not pinned by digest" .name .image) -}}
{{- end -}}
{{- .image -}}
{{- end -}}

{{/* Pod Security Standard "restricted": the pod and container security contexts. */}}
{{- define "mlprov.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mlprov.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Service URLs -------------------------------------------------------------------------------- */}}
{{- define "mlprov.controllerUrl" -}}
http://{{ include "mlprov.controller" . }}.{{ .Release.Namespace }}.svc.{{ .Values.global.clusterDomain }}:{{ .Values.controller.port }}
{{- end -}}

{{- define "mlprov.mlflowUri" -}}
{{- if .Values.mlflow.enabled -}}
http://{{ include "mlprov.mlflow" . }}.{{ .Release.Namespace }}.svc.{{ .Values.global.clusterDomain }}:{{ .Values.mlflow.port }}
{{- else -}}
{{- required "mlflow.externalUri is required when mlflow.enabled is false" .Values.mlflow.externalUri -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{ .Values.kafka.name }}-kafka-bootstrap.{{ .Release.Namespace }}.svc:{{ ternary 9093 9092 .Values.kafka.tls }}
{{- else -}}
{{- .Values.kafka.externalBootstrap -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.esUrl" -}}
{{- if .Values.elasticsearch.enabled -}}
https://{{ .Values.elasticsearch.name }}-es-http.{{ .Release.Namespace }}.svc:9200
{{- else -}}
{{- .Values.elasticsearch.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.s3Endpoint" -}}
{{- if eq .Values.s3.mode "minio" -}}
minio.{{ .Release.Namespace }}.svc:{{ ternary 443 80 .Values.s3.minio.requestAutoCert }}
{{- else -}}
{{- required "s3.endpoint is required when s3.mode is external" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "mlprov.s3Secure" -}}
{{- if eq .Values.s3.mode "minio" -}}{{ .Values.s3.minio.requestAutoCert }}{{- else -}}{{ .Values.s3.secure }}{{- end -}}
{{- end -}}

{{/* The S3 credentials Secret and its keys: the MinIO tenant user's, or the external bucket's. */}}
{{- define "mlprov.s3AccessKeyRef" -}}
{{- if eq .Values.s3.mode "minio" -}}
name: {{ .Values.s3.credentialsSecret }}
key: CONSOLE_ACCESS_KEY
{{- else -}}
name: {{ .Values.s3.credentialsSecret }}
key: accessKey
{{- end -}}
{{- end -}}

{{- define "mlprov.s3SecretKeyRef" -}}
{{- if eq .Values.s3.mode "minio" -}}
name: {{ .Values.s3.credentialsSecret }}
key: CONSOLE_SECRET_KEY
{{- else -}}
name: {{ .Values.s3.credentialsSecret }}
key: secretKey
{{- end -}}
{{- end -}}

{{/* NetworkPolicy peers ---------------------------------------------------------------------- */}}
{{- define "mlprov.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.dns.podLabels | nindent 10 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/* Restricted contexts for operator-managed pods: the image's own non-root user (no runAsUser). */}}
{{- define "mlprov.operatorPodSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pods the controller's runtime creates, by the identity labels it gives them
     (controller/runtime/k8s_objects.py: app.kubernetes.io/managed-by=mlprov, mlprov.io/kind=job|server). */}}
{{- define "mlprov.runtimePods" -}}
matchLabels:
  app.kubernetes.io/managed-by: mlprov
matchExpressions:
  - {key: mlprov.io/kind, operator: In, values: [job, server]}
{{- end -}}

{{- define "mlprov.serverPods" -}}
matchLabels:
  app.kubernetes.io/managed-by: mlprov
  mlprov.io/kind: server
{{- end -}}
