{{/* Chart name, overridable with nameOverride. */}}
{{- define "chat-system.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, with the chart name unless the release name has it. */}}
{{- define "chat-system.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of one component's objects: "<fullname>-<component>", the fullname cut at 45 characters (as it always was,
so a name that was valid never changes). A name longer than its component's kinds allow is cut further and ends
in a hash of the whole name (chat-system.fitName), so it stays unique and the same on every render. The limits:
a StatefulSet's pods carry the label controller-revision-hash "<name>-<up to 10 characters>" (at most 63), so
the dependencies' StatefulSets take 52, as does the CronJob (the API server's limit, which leaves room for the
Jobs' time suffix); a RabbitmqCluster 45 (the operator names its StatefulSet "<name>-server"); everything else
63, a Service's limit. The headless and Sentinel Services add 9 characters to a name of at most 52.
Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "chat-system.componentName" -}}
{{- $name := printf "%s-%s" (include "chat-system.fullname" .ctx | trunc 45 | trimSuffix "-") .component -}}
{{- $max := 63 -}}
{{- if has .component (list "mariadb" "redis" "rabbitmq" "elasticsearch" "counter-cron") -}}
{{- $max = 52 -}}
{{- end -}}
{{- if and (eq .component "rabbitmq") .ctx.Values.rabbitmq.clusterOperator -}}
{{- $max = 45 -}}
{{- end -}}
{{- include "chat-system.fitName" (dict "name" $name "max" $max) -}}
{{- end -}}

{{/* A name of at most "max" characters: unchanged when it fits, else cut and ended by 8 characters of its hash. */}}
{{- define "chat-system.fitName" -}}
{{- if le (len .name) (int .max) -}}
{{- .name -}}
{{- else -}}
{{- printf "%s-%s" (.name | trunc (sub (int .max) 9 | int) | trimSuffix "-") (.name | sha256sum | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/* chart label value: name-version. */}}
{{- define "chat-system.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: name, instance and component only, so they never change on upgrade. */}}
{{- define "chat-system.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-system.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component's objects; call with (dict "ctx" $ "component" "api"). */}}
{{- define "chat-system.labels" -}}
{{ include "chat-system.selectorLabels" . }}
helm.sh/chart: {{ include "chat-system.chart" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: chat-system
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of a component's pods: its labels without helm.sh/chart, so that a new chart version alone restarts no
pod (the databases least of all). The bundled dependencies' pods (dependency: true) also go without
app.kubernetes.io/version, which is chat-system's version, not theirs. Call with (dict "ctx" $ "component" "api")
or (dict "ctx" $ "component" "mariadb" "dependency" true).
*/}}
{{- define "chat-system.podLabels" -}}
{{- $labels := include "chat-system.labels" . | fromYaml -}}
{{- $_ := unset $labels "helm.sh/chart" -}}
{{- if .dependency -}}
{{- $_ := unset $labels "app.kubernetes.io/version" -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/*
Image reference of a chat-system component; call with (dict "ctx" $ "image" .Values.api.image). The registry is
global.imageRegistry, else image.registry, prepended to the repository (which already holds the chat-system/ path).
*/}}
{{- define "chat-system.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .ctx.Values.image.registry | trimSuffix "/" -}}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Image reference of a bundled dependency; call with (dict "ctx" $ "image" .Values.mariadb.image). */}}
{{- define "chat-system.dependencyImage" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry | trimSuffix "/" -}}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") -}}
{{- printf "%s:%s" $repository .image.tag -}}
{{- end -}}

{{/* The Secret holding the connection URLs and the bundled dependencies' passwords. */}}
{{- define "chat-system.secretName" -}}
{{- .Values.auth.existingSecret | default (include "chat-system.fullname" .) -}}
{{- end -}}

{{/*
The keys auth.existingSecret must hold for these values, comma-separated: the connection URLs, and the password
of every bundled dependency (with the Erlang cookie of a RabbitMQ cluster). Optional besides: DATABASE_READ_URL,
ELASTICSEARCH_URL, ADMIN_API_KEY.
*/}}
{{- define "chat-system.existingSecretKeys" -}}
{{- $v := .Values -}}
{{- $keys := list "DATABASE_URL" "REDIS_URL" "RABBITMQ_URL" -}}
{{- if $v.mariadb.enabled -}}
{{- $keys = concat $keys (list "MARIADB_PASSWORD" "MARIADB_ROOT_PASSWORD") -}}
{{- end -}}
{{- if $v.redis.enabled -}}
{{- $keys = append $keys "REDIS_PASSWORD" -}}
{{- end -}}
{{- if and $v.rabbitmq.enabled (not $v.rabbitmq.clusterOperator) -}}
{{- $keys = append $keys "RABBITMQ_PASSWORD" -}}
{{- if gt (int $v.rabbitmq.replicas) 1 -}}
{{- $keys = append $keys "RABBITMQ_ERLANG_COOKIE" -}}
{{- end -}}
{{- end -}}
{{- if $v.elasticsearch.enabled -}}
{{- $keys = append $keys "ELASTICSEARCH_PASSWORD" -}}
{{- end -}}
{{- join ", " $keys -}}
{{- end -}}

{{/* ServiceAccount of the chat-system workloads (they never call the Kubernetes API). */}}
{{- define "chat-system.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "chat-system.fullname" .) -}}
{{- end -}}

{{/* ServiceAccount of the operator. */}}
{{- define "chat-system.operatorServiceAccountName" -}}
{{- .Values.operator.serviceAccount.name | default (include "chat-system.componentName" (dict "ctx" . "component" "operator")) -}}
{{- end -}}

{{/*
Name of a cluster-scoped object, or of an object placed outside the release namespace: it carries the release
namespace, so the same release name installed in two namespaces never collides. Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "chat-system.globalName" -}}
{{- printf "%s-%s" (.ctx.Release.Namespace | default "default") (include "chat-system.componentName" .) | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{/* The namespaces whose Application objects the operator serves, comma-separated (empty: every namespace). */}}
{{- define "chat-system.operatorNamespaces" -}}
{{- if not .Values.operator.clusterWide -}}
{{- join "," (.Values.operator.watchNamespaces | default (list (.Release.Namespace | default "default"))) -}}
{{- end -}}
{{- end -}}

{{/*
Labels that select the bundled RabbitMQ's pods (and, with the Cluster Operator, its Service): the chart's selector
labels, or with rabbitmq.clusterOperator the labels the operator gives everything of the RabbitmqCluster (its name
and component rabbitmq; it drops labels under app.kubernetes.io/ that it did not set itself).
*/}}
{{- define "chat-system.rabbitmqPodLabels" -}}
{{- if .Values.rabbitmq.clusterOperator -}}
app.kubernetes.io/name: {{ include "chat-system.componentName" (dict "ctx" . "component" "rabbitmq") }}
app.kubernetes.io/component: rabbitmq
{{- else -}}
{{ include "chat-system.selectorLabels" (dict "ctx" . "component" "rabbitmq") }}
{{- end -}}
{{- end -}}

{{/* In-cluster DNS name of one component's Service, resolvable from other namespaces (KEDA reads RabbitMQ). */}}
{{- define "chat-system.serviceHost" -}}
{{- printf "%s.%s.svc" (include "chat-system.componentName" .) .ctx.Release.Namespace -}}
{{- end -}}

{{/* In-cluster URL of the API, written by the operator into tenant Secrets. */}}
{{- define "chat-system.apiInternalUrl" -}}
{{- printf "http://%s:%v" (include "chat-system.serviceHost" (dict "ctx" . "component" "api")) .Values.api.service.port -}}
{{- end -}}

{{/* Where the count sync pushes its metrics (empty: nowhere). */}}
{{- define "chat-system.pushgatewayUrl" -}}
{{- if .Values.counterCron.pushgatewayUrl -}}
{{- .Values.counterCron.pushgatewayUrl -}}
{{- else if .Values.pushgateway.enabled -}}
{{- printf "http://%s:9091" (include "chat-system.serviceHost" (dict "ctx" . "component" "pushgateway")) -}}
{{- end -}}
{{- end -}}

{{/*
A tri-state switch (auto, true, false; booleans or strings): "true" when on. `auto` asks .Capabilities, which a
plain `helm template` does not fill from a cluster, so GitOps renders should set the switch explicitly.
Call with (dict "value" .Values.keda "api" "keda.sh/v1alpha1/ScaledObject" "ctx" $).
*/}}
{{- define "chat-system.switch" -}}
{{- $value := toString .value -}}
{{- if eq $value "true" -}}true
{{- else if eq $value "auto" -}}
{{- if .ctx.Capabilities.APIVersions.Has .api -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when the writers scale on queue depth with KEDA ScaledObjects (the `keda` switch). */}}
{{- define "chat-system.kedaAvailable" -}}
{{- include "chat-system.switch" (dict "value" .Values.keda "api" "keda.sh/v1alpha1/ScaledObject" "ctx" .) -}}
{{- end -}}

{{/* "true" when the prometheus-operator objects and the dashboard are rendered (the `monitoring` switch). */}}
{{- define "chat-system.monitoringEnabled" -}}
{{- include "chat-system.switch" (dict "value" .Values.monitoring "api" "monitoring.coreos.com/v1/ServiceMonitor" "ctx" .) -}}
{{- end -}}

{{/* The release Secret as stored in the cluster (empty without a cluster, e.g. `helm template`). */}}
{{- define "chat-system.storedSecret" -}}
{{- $stored := lookup "v1" "Secret" .Release.Namespace (include "chat-system.fullname" .) -}}
{{- if and $stored $stored.data -}}
{{- toJson $stored.data -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
A credential, in this order: the value given in values; the one already stored in the release's Secret (so an
upgrade keeps it); one derived from auth.passwordSeed (deterministic: the same seed, release, namespace and key
always give the same password, which `helm template`/GitOps renders need); a random one on the first install.
An upgrade that finds no stored value and has no seed fails rather than change a password the databases keep.
Call with (dict "ctx" $ "key" "MARIADB_PASSWORD" "value" .Values.mariadb.auth.password "stored" $storedData);
"introduced" true for a key a later version added (see below).
*/}}
{{- define "chat-system.credential" -}}
{{- $stored := .stored | default dict -}}
{{- if .value -}}
{{- .value -}}
{{- else if hasKey $stored .key -}}
{{- index $stored .key | b64dec -}}
{{- else if .ctx.Values.auth.passwordSeed -}}
{{- printf "%s/%s/%s/%s" .ctx.Values.auth.passwordSeed .ctx.Release.Namespace .ctx.Release.Name .key | sha256sum | trunc 40 -}}
{{- else if and .ctx.Release.IsUpgrade .introduced $stored -}}
{{- /* A key this version introduced, on the upgrade of a release that stored the others: nothing keeps a
password for it yet (the migrations Job or the broker's definitions set it from here), so a new one is safe. */ -}}
{{- randAlphaNum 32 -}}
{{- else if .ctx.Release.IsUpgrade -}}
{{- fail (printf "\n\n%s: no stored value in Secret %s/%s to keep (helm template --is-upgrade, a dry run without cluster access, or a deleted Secret). Set it in values, set auth.passwordSeed, or use auth.existingSecret; a new random password would no longer match the one the database keeps." .key .ctx.Release.Namespace (include "chat-system.fullname" .ctx)) -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* Pod security context of the chat-system components. */}}
{{- define "chat-system.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{/* Container security context of the chat-system components. */}}
{{- define "chat-system.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* Secret reference for one environment variable; call with (dict "ctx" $ "key" "DATABASE_URL" "optional" false). */}}
{{- define "chat-system.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "chat-system.secretName" .ctx }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/*
Environment of the Python services: settings from the ConfigMap, credentials from the Secret, key by key. Call
with (dict "ctx" $ "broker" "api"|"writer"|""): RABBITMQ_URL is that component's broker user's URL
(chat-system.rabbitmqUrlKey); "" for the components that use no broker (count sync, operator), which get none.
*/}}
{{- define "chat-system.appEnv" -}}
{{- $ctx := .ctx -}}
{{ include "chat-system.secretEnv" (dict "ctx" $ctx "key" "DATABASE_URL") }}
{{ include "chat-system.secretEnv" (dict "ctx" $ctx "key" "DATABASE_READ_URL" "optional" true) }}
{{ include "chat-system.secretEnv" (dict "ctx" $ctx "key" "REDIS_URL") }}
{{- if .broker }}
- name: RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "chat-system.secretName" $ctx }}
      key: {{ include "chat-system.rabbitmqUrlKey" (dict "ctx" $ctx "role" .broker) }}
{{- end }}
{{ include "chat-system.secretEnv" (dict "ctx" $ctx "key" "ELASTICSEARCH_URL" "optional" true) }}
{{- include "chat-system.tlsEnv" (dict "ctx" $ctx "broker" .broker) }}
{{- end -}}

{{/*
TLS to the dependencies (tls.caSecrets): each named Secret's `ca.crt` is mounted read-only at
/etc/chat-system/tls/<dependency>/ca.crt in every chat-system container. RabbitMQ and Elasticsearch read it through
RABBITMQ_CA_FILE / ELASTICSEARCH_CA_FILE; MySQL and Redis through their URL (`?ssl_ca=…` / `?ssl_ca_certs=…`), which
the user writes (external URLs) or the chart builds (bundled ones are not served over TLS by this chart).
*/}}
{{- define "chat-system.tlsEnv" -}}
{{- $broker := .broker -}}
{{- with .ctx.Values.tls.caSecrets }}
{{- if and .rabbitmq $broker }}
- name: RABBITMQ_CA_FILE
  value: /etc/chat-system/tls/rabbitmq/ca.crt
{{- end }}
{{- if .elasticsearch }}
- name: ELASTICSEARCH_CA_FILE
  value: /etc/chat-system/tls/elasticsearch/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* volumeMounts of the CA Secrets (tls.caSecrets), one directory per dependency. */}}
{{- define "chat-system.tlsVolumeMounts" -}}
{{- range $dependency, $secret := .Values.tls.caSecrets }}
{{- if $secret }}
- name: ca-{{ $dependency }}
  mountPath: /etc/chat-system/tls/{{ $dependency }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* volumes of the CA Secrets (tls.caSecrets): only the `ca.crt` key of each. */}}
{{- define "chat-system.tlsVolumes" -}}
{{- range $dependency, $secret := .Values.tls.caSecrets }}
{{- if $secret }}
- name: ca-{{ $dependency }}
  secret:
    secretName: {{ $secret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* envFrom of the Python services: the non-secret settings. */}}
{{- define "chat-system.appEnvFrom" -}}
- configMapRef:
    name: {{ include "chat-system.componentName" (dict "ctx" . "component" "config") }}
{{- end -}}

{{/*
Pod annotations that roll the pods when their settings or credentials change. The credential checksum is taken
over the inputs of the Secret (the values that shape it and the seed), not over its rendered text: generated
passwords are kept once made, so two renders of the same values give the same checksum and a no-op
`helm upgrade` (or a GitOps re-render) rolls nothing.
*/}}
{{- define "chat-system.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.auth.existingSecret }}
{{- $v := .Values }}
{{- $inputs := dict "auth" $v.auth "externalDatabase" $v.externalDatabase "externalRedis" $v.externalRedis "externalRabbitmq" $v.externalRabbitmq "externalElasticsearch" $v.externalElasticsearch }}
{{- range $dep := list "mariadb" "redis" "rabbitmq" "elasticsearch" }}
{{- $_ := set $inputs $dep (dict "enabled" (index $v $dep).enabled "auth" (index $v $dep).auth) }}
{{- end }}
{{- /* REDIS_URL also follows the Redis topology. */}}
{{- $_ := set $inputs "redisTopology" (dict "mode" $v.redis.mode "sentinel" $v.redis.sentinel "cluster" $v.redis.cluster) }}
checksum/secret: {{ toJson $inputs | sha256sum }}
{{- end }}
{{- end -}}

{{/* Scheduling fields of a pod (priorityClassName, nodeSelector, tolerations, affinity, topologySpreadConstraints); call with the component's values. */}}
{{- define "chat-system.scheduling" -}}
{{- $fields := dict -}}
{{- range $field := list "priorityClassName" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" }}
{{- with index $ $field }}
{{- $_ := set $fields $field . }}
{{- end }}
{{- end }}
{{- if $fields }}
{{- toYaml $fields }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets of every pod: global.imagePullSecrets and image.pullSecrets. */}}
{{- define "chat-system.imagePullSecrets" -}}
{{- $names := concat (.Values.global.imagePullSecrets | default list) (.Values.image.pullSecrets | default list) | uniq -}}
{{- with $names }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
A probe: the fixed handler plus the timings from values, or nothing when disabled.
Call with (dict "handler" (dict "httpGet" (dict "path" "/healthz" "port" "http")) "settings" $values.livenessProbe).
*/}}
{{- define "chat-system.probe" -}}
{{- if .settings.enabled -}}
{{- toYaml (merge (omit .settings "enabled") .handler) -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations and labels given in values; call with (dict "field" "podLabels" "values" $values). */}}
{{- define "chat-system.extraMap" -}}
{{- with index .values .field -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* Render a helper's output indented, or nothing at all (no blank line) when it is empty. */}}
{{- define "chat-system.indent" -}}
{{- with include .template .context | trim }}
{{- . | nindent $.indent }}
{{- end }}
{{- end -}}

{{/*
Pod security context of a bundled dependency: non-root and RuntimeDefault seccomp always, the user, group and
fsGroup of its image from values (<dependency>.podSecurityContext), where each may be null for a platform that
assigns them itself (OpenShift's restricted SCC refuses ids outside the namespace's range).
Call with the dependency's podSecurityContext values.
*/}}
{{- define "chat-system.dependencyPodSecurityContext" -}}
runAsNonRoot: true
{{- with . }}
{{ toYaml . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Security context of a bundled dependency running as its image's own non-root user. */}}
{{- define "chat-system.dependencyContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
When the migration hook runs. Before install and before every upgrade, so the schema is ready before any
workload rolls; except that a bundled MariaDB does not exist before the first install, which then migrates right
after its objects are created (until then the API answers 5xx for requests that need a table).
*/}}
{{- define "chat-system.migrationHooks" -}}
{{- if .Values.mariadb.enabled -}}post-install,pre-upgrade{{- else -}}pre-install,pre-upgrade{{- end -}}
{{- end -}}

{{/*
Annotations of a hook, for Helm and for Argo CD. Argo CD maps Helm's hooks itself, but every sync is both an
install and an upgrade to it: pre-upgrade would run the migrations as PreSync, before a bundled MariaDB exists on
the first sync. So the Argo CD phase and wave are given here, and win over Helm's on the object:
- migrations with an external database: PreSync (before anything of the release changes);
- migrations with the bundled MariaDB: a Sync hook in wave -1, after MariaDB and the release Secret (wave -2,
  see chat-system.argoWaveBeforeMigrations) are healthy and before the workloads (wave 0) roll;
- the uninstall cleanup: PreDelete (Argo CD releases whose documentation lists PreDelete; earlier ones skip it).
Call with (dict "helm" "pre-delete" "weight" -10 "argo" "PreDelete" "wave" -10); wave defaults to weight.
*/}}
{{- define "chat-system.hookAnnotations" -}}
helm.sh/hook: {{ .helm }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
argocd.argoproj.io/hook: {{ .argo }}
argocd.argoproj.io/sync-wave: {{ (hasKey . "wave" | ternary .wave .weight) | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation,HookSucceeded
{{- end -}}

{{/* Hook annotations of the migration Job (step 1) and of its Secret (step 0); call with (dict "ctx" $ "step" 1). */}}
{{- define "chat-system.migrationHookAnnotations" -}}
{{- $bundled := .ctx.Values.mariadb.enabled -}}
{{- $weight := ternary 0 -10 (eq (int .step) 1) -}}
{{- $wave := ternary $weight (ternary -1 -2 (eq (int .step) 1)) (not $bundled) -}}
{{- include "chat-system.hookAnnotations" (dict "helm" (include "chat-system.migrationHooks" .ctx) "weight" $weight "argo" (ternary "Sync" "PreSync" $bundled) "wave" $wave) -}}
{{- end -}}

{{/*
Argo CD sync wave of what the migrations need when MariaDB is bundled (its objects and the release Secret): they
are applied and healthy before the migration Job (wave -1) runs. Helm ignores it.
*/}}
{{- define "chat-system.argoWaveBeforeMigrations" -}}
argocd.argoproj.io/sync-wave: "-2"
{{- end -}}

{{/* The two writers: component name, values, Python module and the queue each consumes (KEDA scales on it).
Queue suffixes are those of common/chat_common/wire/topology.py, their source: tests/unit/test_writer_queue_names.py
checks they agree. */}}
{{- define "chat-system.writers" -}}
chat-writer:
  values: chatWriter
  module: chat_writer
  queue: {{ printf "%s.chats" .Values.config.queuePrefix }}
message-writer:
  values: messageWriter
  module: message_writer
  queue: {{ printf "%s.messages" .Values.config.queuePrefix }}
{{- end -}}

{{/*
Name of the operator's kopf peering object. The ClusterKopfPeering is cluster-scoped and a KopfPeering may sit in
a namespace other releases also see, so the name carries the release namespace as well as the release name.
*/}}
{{- define "chat-system.peeringName" -}}
{{- include "chat-system.globalName" (dict "ctx" . "component" "operator") -}}
{{- end -}}

{{/* volumeClaimTemplates of a bundled dependency; call with (dict "ctx" $ "persistence" .Values.mariadb.persistence). */}}
{{- define "chat-system.volumeClaimTemplates" -}}
{{- if and .persistence.enabled (not .persistence.existingClaim) }}
volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      {{- with .persistence.storageClass }}
      storageClassName: {{ . | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ .persistence.size }}
{{- end }}
{{- end -}}

{{/* The data volume of a bundled dependency without a claim template: an existing claim, or an emptyDir. */}}
{{- define "chat-system.ephemeralDataVolume" -}}
{{- if and .persistence.enabled .persistence.existingClaim }}
- name: data
  persistentVolumeClaim:
    claimName: {{ .persistence.existingClaim }}
{{- else if not .persistence.enabled }}
- name: data
  emptyDir: {}
{{- end }}
{{- end -}}

{{/*
checkov findings this chart accepts, each with its reason, as the skip annotations checkov reads on the object.
Call with the list of check ids that apply to the object.
*/}}
{{- define "chat-system.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_15" "pinned version tags (or digests) make IfNotPresent safe, and images loaded into kind cannot be pulled"
  "CKV_K8S_35" "the processes read settings from the environment; credentials reach it only by secretKeyRef"
  "CKV_K8S_43" "images are pinned by version tag; set image.digest (chat-system components) to pin by digest"
  "CKV_K8S_40" "the official image runs as its own system user, which owns its data directory"
  "CKV_K8S_38" "the operator manages tenant Secrets through the Kubernetes API with its ServiceAccount token"
  "CKV_K8S_8" "a run-to-completion test pod has nothing to probe"
  "CKV_K8S_9" "a run-to-completion test pod has nothing to probe"
-}}
{{- $lines := list -}}
{{- range $i, $check := . }}
{{- $lines = append $lines (printf "checkov.io/skip%d: %s" (add1 $i) (printf "%s=%s" $check (index $reasons $check) | quote)) -}}
{{- end }}
{{- join "\n" $lines -}}
{{- end -}}

{{/*
Whether the chart gives each component its own RabbitMQ user (chat_common.ops.broker_users): with the bundled broker
it runs itself and a Secret it makes. With auth.existingSecret, an external broker or the RabbitMQ Cluster Operator,
every component uses RABBITMQ_URL as given.
*/}}
{{- define "chat-system.rabbitmqUsers" -}}
{{- if and .Values.rabbitmq.enabled (not .Values.rabbitmq.clusterOperator) (not .Values.auth.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The Secret key of a component's broker URL: RABBITMQ_URL (the API's), RABBITMQ_WRITER_URL, RABBITMQ_MONITOR_URL. */}}
{{- define "chat-system.rabbitmqUrlKey" -}}
{{- if and (include "chat-system.rabbitmqUsers" .ctx) (ne .role "api") -}}
{{- printf "RABBITMQ_%s_URL" (upper .role) -}}
{{- else -}}
RABBITMQ_URL
{{- end -}}
{{- end -}}

{{/*
The bundled broker's definitions (users, the vhost, permissions), loaded at every boot: the administrator
(rabbitmq.auth.username: the broker's own and the queue-migration tool's) and one user per component, with the
permissions of chat_common.ops.broker_users (the same regexes; tests/chart/test_broker_users.py compares them).
Call with (dict "ctx" $ "passwords" (dict "admin" … "api" … "writer" … "monitor" …)).
*/}}
{{- define "chat-system.rabbitmqDefinitions" -}}
{{- $v := .ctx.Values -}}
{{- $p := regexQuoteMeta $v.config.queuePrefix -}}
{{- $work := printf "%s\\.(chats|messages)" $p -}}
{{- $tiers := "\\.delay\\.[0-9]+s" -}}
{{- $legacy := "\\.retry\\.[0-9]+s" -}}
{{- $ann := printf "%s\\.announcements" $p -}}
{{- $admin := $v.rabbitmq.auth.username -}}
{{- $perms := dict
  "api" (dict "configure" (printf "^(%s(\\.dead|%s)?|%s|amq\\.gen-.*)$" $work $tiers $ann) "write" "^(amq\\.default|amq\\.gen-.*)$" "read" (printf "^(%s|%s|amq\\.gen-.*)$" $work $ann) "tags" "")
  "writer" (dict "configure" (printf "^(%s(\\.dead|%s|%s)?|%s)$" $work $tiers $legacy $ann) "write" (printf "^(amq\\.default|%s)$" $ann) "read" (printf "^%s(%s|%s)?$" $work $tiers $legacy) "tags" "")
  "monitor" (dict "configure" "^$" "write" "^$" "read" "^$" "tags" "monitoring") -}}
{{- $users := list (dict "name" $admin "password" .passwords.admin "tags" (list "administrator")) -}}
{{- $permissions := list (dict "user" $admin "vhost" "/" "configure" ".*" "write" ".*" "read" ".*") -}}
{{- range $role := list "api" "writer" "monitor" -}}
{{- $r := index $perms $role -}}
{{- $name := printf "%s_%s" $admin $role -}}
{{- $users = append $users (dict "name" $name "password" (index $.passwords $role) "tags" (ternary (list) (list $r.tags) (eq $r.tags ""))) -}}
{{- $permissions = append $permissions (dict "user" $name "vhost" "/" "configure" $r.configure "write" $r.write "read" $r.read) -}}
{{- end -}}
{{- toJson (dict "users" $users "vhosts" (list (dict "name" "/")) "permissions" $permissions) -}}
{{- end -}}
