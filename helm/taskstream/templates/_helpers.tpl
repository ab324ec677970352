{{/* Names and labels shared by every resource. */}}
{{- define "taskstream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taskstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "taskstream.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskstream
taskstream.io/environment: {{ .Values.environment }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "taskstream.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "taskstream.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "taskstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "taskstream.tag" .) -}}
{{- end -}}

{{/* The settings every process reads: the ConfigMap, then the Secret (secrets win). */}}
{{- define "taskstream.envFrom" -}}
- configMapRef:
    name: {{ include "taskstream.fullname" . }}-config
- secretRef:
    name: {{ required "secret.name: the Secret holding DATABASE_URL, JWT_SECRET, ..." .Values.secret.name }}
{{- end -}}

{{/*
A Deployment of one taskstream process. Arguments:
  root       the chart's context
  component  gateway | relay | projector | workers
  values     the component's values
  args       the container's arguments (the CLI subcommand and its options)
  replicas   the replica count (omitted when an HPA owns it)
  strategy   the update strategy
  http       whether the process serves HTTP (port, probes on /healthz and /readyz)
*/}}
{{- define "taskstream.deployment" -}}
{{- $root := .root -}}
{{- $name := printf "%s-%s" (include "taskstream.fullname" $root) .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "taskstream.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "taskstream.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "taskstream.selectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
        app.kubernetes.io/version: {{ include "taskstream.tag" $root | quote }}
      annotations:
        # A changed ConfigMap rolls the pods.
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- if gt (int (default 1 .replicas)) 1 }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "taskstream.selectorLabels" (dict "root" $root "component" .component) | nindent 14 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "taskstream.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          envFrom:
            {{- include "taskstream.envFrom" $root | nindent 12 }}
          {{- if or .http .values.metricsPort }}
          ports:
            {{- if .http }}
            - name: http
              containerPort: {{ int $root.Values.config.HTTP_PORT }}
              protocol: TCP
            {{- end }}
            {{- with .values.metricsPort }}
            - name: metrics
              containerPort: {{ int . }}
              protocol: TCP
            {{- end }}
          {{- end }}
          {{- if .http }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          {{- end }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        # The root filesystem is read-only; /tmp is the one writable place.
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
{{- end -}}
