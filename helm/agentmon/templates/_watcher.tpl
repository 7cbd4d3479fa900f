{{/*
The watcher sidecar, to include into any agent pod spec. Four templates, each taking the same
argument:

  agentmon.watcherSidecar        one list item for the pod's `initContainers:` (a native sidecar,
                                 restartPolicy: Always, Kubernetes >= 1.29)
  agentmon.watcherVolumes        list items for the pod's `volumes:`
  agentmon.agentVolumeMounts     list items for the agent container's `volumeMounts:`
  agentmon.watcherPodLabels      `key: value` lines for the pod's `metadata.labels:` (the PodMonitor
                                 and bot-bridge's NetworkPolicy select it)

The argument is either this chart's root context (`.` / `$` in agentmon's own templates), or a dict:

  (dict "ctx" $                         required: the calling chart's root context (.Release)
        "values" .Values.agentmon       agentmon's values; default: ctx.Values.agentmon when present
                                        (agentmon as a dependency), else ctx.Values
        "run" (dict "taskId" "t-42" "attempt" "1" "shortId" "abc")   optional, over watcher.run
        "watcher" (dict "workspacePath" "/src"))                     optional, over watcher.*

See README "Adding the watcher to your agent pods".
*/}}

{{/* Resolves the argument into .out: ctx (a context for the name helpers), w (watcher values with
the overrides applied), run (the run identity). */}}
{{- define "agentmon.watcher.resolve" -}}
{{- $in := .in -}}
{{- $out := .out -}}
{{- $root := $in -}}
{{- $vals := dict -}}
{{- $runOverride := dict -}}
{{- $watcherOverride := dict -}}
{{- if hasKey $in "ctx" -}}
{{- $root = $in.ctx -}}
{{- if hasKey $in "values" -}}
{{- $vals = $in.values -}}
{{- else if hasKey $root.Values "agentmon" -}}
{{- $vals = $root.Values.agentmon -}}
{{- else -}}
{{- $vals = $root.Values -}}
{{- end -}}
{{- $runOverride = $in.run | default dict -}}
{{- $watcherOverride = $in.watcher | default dict -}}
{{- else -}}
{{- $vals = $root.Values -}}
{{- end -}}
{{- if not (and $vals (hasKey $vals "watcher") (hasKey $vals "secret")) -}}
{{- fail "agentmon.watcherSidecar: pass agentmon's values, e.g. (dict \"ctx\" $ \"values\" .Values.agentmon)" -}}
{{- end -}}
{{- $w := mergeOverwrite (deepCopy $vals.watcher) (deepCopy $watcherOverride) -}}
{{- $run := mergeOverwrite (deepCopy $w.run) (deepCopy $runOverride) -}}
{{- $ctx := dict "Values" $vals "Release" $root.Release "Chart" $root.Chart -}}
{{- $_ := set $out "ctx" $ctx -}}
{{- $_ := set $out "w" $w -}}
{{- $_ := set $out "run" $run -}}
{{- end -}}

{{- define "agentmon.watcher.claudeMount" -}}/agentmon/claude{{- end -}}
{{- define "agentmon.watcher.tokenMount" -}}/var/run/secrets/agentmon{{- end -}}

{{/* "true" when the sidecar proves its pod with a projected ServiceAccount token (BRIDGE_TOKEN_FILE)
instead of the shared API token: sink bridge, and this release's bot-bridge reviews tokens
(botBridge.tokenReview, which needs botBridge.reconcile for its Kubernetes access). Argument: (dict "v" values "w" watcher). */}}
{{- define "agentmon.watcher.podToken" -}}
{{- $bb := index .v "botBridge" | default dict -}}
{{- $tr := $bb.tokenReview | default dict -}}
{{- $rc := $bb.reconcile | default dict -}}
{{- if and (eq .w.sink "bridge") $bb.enabled $tr.enabled $rc.enabled -}}
true
{{- end -}}
{{- end -}}
{{- define "agentmon.watcher.stateMount" -}}/var/lib/agentmon{{- end -}}

{{- define "agentmon.watcherPodLabels" -}}
{{- $r := dict -}}
{{- include "agentmon.watcher.resolve" (dict "in" . "out" $r) -}}
{{ $r.w.podLabel.key }}: {{ $r.w.podLabel.value | quote }}
{{- end -}}

{{- define "agentmon.watcherVolumes" -}}
{{- $r := dict -}}
{{- include "agentmon.watcher.resolve" (dict "in" . "out" $r) -}}
{{- $w := $r.w -}}
- name: agentmon-claude
  emptyDir:
    {{- if $w.claude.sizeLimit }}
    sizeLimit: {{ $w.claude.sizeLimit }}
    {{- else }} {}
    {{- end }}
- name: agentmon-watcher-state
  {{- if $w.state.volume }}
  {{- toYaml $w.state.volume | nindent 2 }}
  {{- else }}
  emptyDir:
    {{- if $w.state.sizeLimit }}
    sizeLimit: {{ $w.state.sizeLimit }}
    {{- else }} {}
    {{- end }}
  {{- end }}
{{- if and $w.input.enabled (eq $w.sink "bridge") }}
- name: agentmon-input
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- if include "agentmon.watcher.podToken" (dict "v" $r.ctx.Values "w" $w) }}
# The pod's identity for bot-bridge: a ServiceAccount token for bot-bridge's audience only, rotated
# by the kubelet; it grants no Kubernetes API access by itself.
- name: agentmon-pod-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ $r.ctx.Values.botBridge.tokenReview.audience | quote }}
          expirationSeconds: {{ int ($w.podToken.expirationSeconds | default 600) }}
          path: token
{{- end }}
{{- end -}}

{{- define "agentmon.agentVolumeMounts" -}}
{{- $r := dict -}}
{{- include "agentmon.watcher.resolve" (dict "in" . "out" $r) -}}
{{- $w := $r.w -}}
- name: agentmon-claude
  mountPath: {{ $w.claude.agentMountPath }}
{{- if and $w.input.enabled (eq $w.sink "bridge") }}
- name: agentmon-input
  mountPath: {{ $w.input.mountPath }}
{{- end }}
{{- end -}}

{{/* env entries for the optional settings: [values key, ENV name] */}}
{{- define "agentmon.watcher.configEnv" -}}
{{- $c := .config -}}
{{- $map := list
  (list "transcriptPath" "TRANSCRIPT_PATH") (list "startAt" "START_AT") (list "logLevel" "RUST_LOG")
  (list "logFormat" "LOG_FORMAT") (list "batchSize" "BATCH_SIZE") (list "queueMaxEvents" "QUEUE_MAX_EVENTS")
  (list "queueMaxBytes" "QUEUE_MAX_BYTES") (list "maxLineBytes" "MAX_LINE_BYTES")
  (list "parityMode" "PARITY_MODE") (list "pollIntervalMs" "POLL_INTERVAL_MS")
  (list "channelMessagesPerMinute" "CHANNEL_MESSAGES_PER_MINUTE")
  (list "deliveryMaxElapsed" "DELIVERY_MAX_ELAPSED") (list "sinkUnhealthyAfter" "SINK_UNHEALTHY_AFTER")
  (list "idleCompleteAfter" "IDLE_COMPLETE_AFTER") (list "shutdownTimeout" "SHUTDOWN_TIMEOUT")
  (list "dlqMaxBytes" "DLQ_MAX_BYTES") (list "otlpEndpoint" "OTEL_EXPORTER_OTLP_ENDPOINT") -}}
{{- range $map }}
{{- $v := index $c (index . 0) }}
{{- if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
- name: {{ index . 1 }}
  value: {{ printf "%d" (int64 $v) | quote }}
{{- else if or (kindIs "bool" $v) (and (not (kindIs "invalid" $v)) (ne (toString $v) "")) }}
- name: {{ index . 1 }}
  value: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- with $c.filters }}
- name: FILTERS
  value: {{ toJson . | quote }}
{{- end }}
{{- with $c.modelCosts }}
- name: MODEL_COSTS
  value: {{ toJson . | quote }}
{{- end }}
{{- end -}}

{{/* One run identity variable: the value, else the pod annotation through the downward API. */}}
{{- define "agentmon.watcher.runEnv" -}}
- name: {{ .env }}
  {{- if ne (toString .value) "" }}
  value: {{ toString .value | quote }}
  {{- else }}
  valueFrom:
    fieldRef:
      fieldPath: metadata.annotations['{{ .prefix }}{{ .annotation }}']
  {{- end }}
{{- end -}}

{{- define "agentmon.watcherSidecar" -}}
{{- $r := dict -}}
{{- include "agentmon.watcher.resolve" (dict "in" . "out" $r) -}}
{{- $ctx := $r.ctx -}}
{{- $w := $r.w -}}
{{- $run := $r.run -}}
{{- $v := $ctx.Values -}}
{{- $input := and $w.input.enabled (eq $w.sink "bridge") -}}
{{- $v6 := eq $w.ipFamily "IPv6" -}}
{{- $podIP := ternary "[$(POD_IP)]" "$(POD_IP)" $v6 -}}
{{- $any := ternary "[::]" "0.0.0.0" $v6 -}}
- name: {{ $w.containerName }}
  image: {{ include "agentmon.image" (dict "ctx" $ctx "image" $w.image) | quote }}
  imagePullPolicy: {{ include "agentmon.imagePullPolicy" (dict "ctx" $ctx "image" $w.image) }}
  # A native sidecar: started before the agent, stopped (SIGTERM: drain, summary, complete) after
  # the agent container exits, so a Job still completes.
  restartPolicy: Always
  command: {{ toJson $w.command }}
  {{- with $w.args }}
  args: {{ toJson . }}
  {{- end }}
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    # The pod's identity, sent to bot-bridge so its reconciler can end the run if the pod dies.
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    - name: CLAUDE_PROJECTS_DIR
      value: {{ trimSuffix "/" (printf "%s/%s" (include "agentmon.watcher.claudeMount" .) ($w.claude.projectsSubPath | default "")) | quote }}
    - name: WORKSPACE_PATH
      value: {{ $w.workspacePath | quote }}
    - name: STATE_DIR
      value: {{ include "agentmon.watcher.stateMount" . | quote }}
    - name: OPS_ADDR
      value: {{ printf "%s:%d" $any (int $w.opsPort) | quote }}
    {{- if eq $w.sink "bridge" }}
    - name: BRIDGE_URL
      value: {{ $w.bridgeUrl | default (printf "http://%s.%s.svc:%d" (include "agentmon.botBridge.fullname" $ctx) $ctx.Release.Namespace (int $v.botBridge.apiPort)) | quote }}
    {{- if include "agentmon.watcher.podToken" (dict "v" $v "w" $w) }}
    # The pod's projected ServiceAccount token, read on every call (the kubelet rotates it).
    - name: BRIDGE_TOKEN_FILE
      value: {{ printf "%s/token" (include "agentmon.watcher.tokenMount" .) | quote }}
    {{- else }}
    - name: BRIDGE_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $w.bridgeToken.secretName | default $v.secret.name | quote }}
          key: {{ $w.bridgeToken.key | default $v.secret.keys.apiToken | quote }}
    {{- end }}
    {{- else if eq $w.sink "webhook" }}
    - name: DISCORD_WEBHOOK_URL
      valueFrom:
        secretKeyRef:
          name: {{ required "watcher.webhook.secretName is required with watcher.sink=webhook" $w.webhook.secretName | quote }}
          key: {{ $w.webhook.key | quote }}
    {{- end }}
    {{- $p := $run.annotationPrefix | default "agentmon.io/" }}
    {{- include "agentmon.watcher.runEnv" (dict "env" "TASK_ID" "value" $run.taskId "prefix" $p "annotation" "task-id") | nindent 4 }}
    {{- include "agentmon.watcher.runEnv" (dict "env" "ATTEMPT" "value" $run.attempt "prefix" $p "annotation" "attempt") | nindent 4 }}
    {{- include "agentmon.watcher.runEnv" (dict "env" "SHORT_ID" "value" $run.shortId "prefix" $p "annotation" "short-id") | nindent 4 }}
    {{- if ne (toString ($run.runId | default "")) "" }}
    - name: RUN_ID
      value: {{ toString $run.runId | quote }}
    {{- end }}
    {{- if $input }}
    # Operator input: bot-bridge calls INPUT_URL (sent as input_url when the run is provisioned).
    - name: INPUT_ADDR
      value: {{ printf "%s:%d" $podIP (int $w.input.port) | quote }}
    - name: INPUT_URL
      value: {{ printf "http://%s:%d" $podIP (int $w.input.port) | quote }}
    - name: AGENT_INPUT_FIFO
      value: {{ printf "%s/%s" (trimSuffix "/" $w.input.mountPath) $w.input.fifoName | quote }}
    {{- end }}
    {{- with include "agentmon.watcher.configEnv" $w | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $w.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: watcher-ops
      containerPort: {{ $w.opsPort }}
      protocol: TCP
    {{- if $input }}
    - name: watcher-input
      containerPort: {{ $w.input.port }}
      protocol: TCP
    {{- end }}
  # The agent starts once the watcher answers /livez (a sidecar's startup probe gates the main
  # containers), so no transcript line is written before the watcher follows the directory.
  startupProbe:
    httpGet:
      path: /livez
      port: watcher-ops
    periodSeconds: {{ $w.startupProbe.periodSeconds }}
    failureThreshold: {{ $w.startupProbe.failureThreshold }}
    timeoutSeconds: {{ $w.startupProbe.timeoutSeconds }}
  # Liveness fails only when one of the watcher's own loops is wedged (every wait on Discord or
  # bot-bridge is bounded and keeps it alive), so an outage never restarts the sidecar.
  livenessProbe:
    httpGet:
      path: /livez
      port: watcher-ops
    periodSeconds: {{ $w.livenessProbe.periodSeconds }}
    failureThreshold: {{ $w.livenessProbe.failureThreshold }}
    timeoutSeconds: {{ $w.livenessProbe.timeoutSeconds }}
  # No readiness probe: a native sidecar's readiness counts for its pod's Ready condition, and a
  # Discord or bot-bridge outage must not turn the agent pod NotReady. The sink's health is in
  # watcher_sink_up / watcher_oldest_pending_age_seconds (alerts) and /readyz for people.
  resources:
    {{- toYaml $w.resources | nindent 4 }}
  securityContext:
    {{- /* values passed by hand may lack it: then the restricted default, never nothing */}}
    {{- if hasKey $w "securityContext" }}
    {{- include "agentmon.securityContext" $w.securityContext | nindent 4 }}
    {{- else }}
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    privileged: false
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
    {{- end }}
  volumeMounts:
    - name: agentmon-claude
      mountPath: {{ include "agentmon.watcher.claudeMount" . }}
      readOnly: true
    - name: agentmon-watcher-state
      mountPath: {{ include "agentmon.watcher.stateMount" . }}
    {{- if $input }}
    - name: agentmon-input
      mountPath: {{ $w.input.mountPath }}
    {{- end }}
    {{- if include "agentmon.watcher.podToken" (dict "v" $v "w" $w) }}
    - name: agentmon-pod-token
      mountPath: {{ include "agentmon.watcher.tokenMount" . }}
      readOnly: true
    {{- end }}
{{- end -}}
