{{- /* Helpers of the bundled Redis in its three modes (templates/dependencies/redis.yaml). */ -}}

{{/* Headless Service of the Redis StatefulSet. */}}
{{- define "chat-system.redisHeadless" -}}
{{- printf "%s-headless" (include "chat-system.componentName" (dict "ctx" . "component" "redis")) -}}
{{- end -}}

{{/* DNS suffix of the Redis pods' stable names: <pod>.<this>. */}}
{{- define "chat-system.redisPodDomain" -}}
{{- printf "%s.%s.svc.cluster.local" (include "chat-system.redisHeadless" .) .Release.Namespace -}}
{{- end -}}

{{/* Pods of the Redis StatefulSet in sentinel or cluster mode (1 in standalone mode). */}}
{{- define "chat-system.redisPods" -}}
{{- $redis := .Values.redis -}}
{{- if eq $redis.mode "sentinel" -}}{{ $redis.sentinel.replicas }}
{{- else if eq $redis.mode "cluster" -}}{{ $redis.cluster.nodes }}
{{- else -}}1
{{- end -}}
{{- end -}}

{{/* "host:port" of every Redis pod, comma-separated; call with (dict "ctx" $ "port" 26379). */}}
{{- define "chat-system.redisEndpoints" -}}
{{- $name := include "chat-system.componentName" (dict "ctx" .ctx "component" "redis") -}}
{{- $domain := include "chat-system.redisPodDomain" .ctx -}}
{{- $endpoints := list -}}
{{- range $i := until (int (include "chat-system.redisPods" .ctx)) -}}
{{- $endpoints = append $endpoints (printf "%s-%d.%s:%v" $name $i $domain $.port) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- end -}}

{{/*
REDIS_URL of the bundled Redis in the forms chat_common.clients.redis_client reads; call with (dict "ctx" $ "password" $pw).
Sentinel: every Sentinel (the client asks them for the current master); they require the same password.
Cluster: every node (the client needs one that answers to learn the slot map).
*/}}
{{- define "chat-system.redisUrl" -}}
{{- $redis := .ctx.Values.redis -}}
{{- if eq $redis.mode "sentinel" -}}
{{- printf "redis+sentinel://:%s@%s/%s?sentinel_password=%s" .password (include "chat-system.redisEndpoints" (dict "ctx" .ctx "port" 26379)) $redis.sentinel.masterName .password -}}
{{- else if eq $redis.mode "cluster" -}}
{{- printf "redis+cluster://:%s@%s" .password (include "chat-system.redisEndpoints" (dict "ctx" .ctx "port" 6379)) -}}
{{- else -}}
{{- printf "redis://:%s@%s:6379/0" .password (include "chat-system.serviceHost" (dict "ctx" .ctx "component" "redis")) -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_REPLICAS_TO_ACK: 1 for a bundled Sentinel or Cluster deployment (a number is answered only once a replica
holds it, so a failover cannot hand it out twice), 0 for one standalone pod, externalRedis.replicasToAck otherwise.
*/}}
{{- define "chat-system.redisReplicasToAck" -}}
{{- if .Values.redis.enabled -}}
{{- ternary 0 1 (eq .Values.redis.mode "standalone") -}}
{{- else -}}
{{- .Values.externalRedis.replicasToAck | default 0 -}}
{{- end -}}
{{- end -}}

{{/* Topology spread of the Redis pods in sentinel and cluster mode: the values', else one per host, spread over zones. */}}
{{- define "chat-system.redisSpread" -}}
{{- $spread := .Values.redis.topologySpreadConstraints -}}
{{- if and (ne .Values.redis.mode "standalone") (not $spread) -}}
{{- $selector := include "chat-system.selectorLabels" (dict "ctx" . "component" "redis") | fromYaml -}}
{{- $spread = list (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "DoNotSchedule" "labelSelector" (dict "matchLabels" $selector)) (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" $selector)) -}}
{{- end -}}
{{- toJson (dict "items" ($spread | default list)) -}}
{{- end -}}

{{/*
Shell functions of the Sentinel mode's scripts (the init container, the pre-stop hook, the Sentinel's readiness
probe); POD_NAME must be set. host N: the DNS name of pod N. is_pod NAME: NAME is one of those, nothing else (an
error reply of redis-cli, printed like an answer, is no master). sentinels_master: the master the Sentinels of the
other pods name, validated (this pod's own Sentinel is not asked: it starts after the init container and stops
with the pod). The ports and names sit on lines of their own, so that the tests run the scripts on loopback.
sh has no local variables: each loop counter has a name of its own.
*/}}
{{- define "chat-system.redisSentinelFunctions" -}}
host() { printf '%s-%s.%s' '{{ include "chat-system.componentName" (dict "ctx" . "component" "redis") }}' "$1" '{{ include "chat-system.redisPodDomain" . }}'; }
redis_port=6379
sentinel_port=26379
pods={{ .Values.redis.sentinel.replicas }}
master_name='{{ .Values.redis.sentinel.masterName }}'
me=$(host "${POD_NAME##*-}")
is_pod() {
  pod_index=0
  while [ "$pod_index" -lt "$pods" ]; do
    if [ "$1" = "$(host "$pod_index")" ]; then return 0; fi
    pod_index=$((pod_index + 1))
  done
  return 1
}
sentinels_master() {
  peer_index=0
  while [ "$peer_index" -lt "$pods" ]; do
    peer=$(host "$peer_index")
    peer_index=$((peer_index + 1))
    if [ "$peer" = "$me" ]; then continue; fi
    reply=$(timeout 3 redis-cli -h "$peer" -p "$sentinel_port" sentinel get-master-addr-by-name "$master_name" 2>/dev/null || true)
    named=$(printf '%s\n' "$reply" | sed -n 1p)
    if is_pod "$named" && [ "$(printf '%s\n' "$reply" | sed -n 2p)" = "$redis_port" ]; then
      printf '%s\n' "$named"
      return 0
    fi
    if [ -n "$reply" ]; then echo "the Sentinel on $peer names no master of ours: $(printf '%s' "$reply" | head -c 200)" >&2; fi
  done
  return 1
}
{{- end -}}
