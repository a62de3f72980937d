#!/bin/sh
# Starts engram-server as one member of a Kubernetes StatefulSet: derives
# --shard from the pod's ordinal, then execs the server (so it is PID 1 and
# gets SIGTERM directly).
#
# Ordinal rule (the same one deploy/k8s/configmap.yaml lists hosts in):
#   pod engram-<o>  ->  shard o / R, replica o % R      (R = ENGRAM_REPLICAS)
# e.g. R = 2: engram-0, engram-1 -> shard 0; engram-4, engram-5 -> shard 2.
#
# Environment:
#   ENGRAM_REPLICAS  replicas per shard (R), required
#   ENGRAM_SHARDS    shards (S); if set, an ordinal >= S*R is refused
#   ENGRAM_CLUSTER   cluster map file, default /etc/engram/cluster.json
#   ENGRAM_DATA      data directory, default /var/lib/engram/data
#   POD_NAME         pod name (downward API), else $HOSTNAME, else hostname
# Further arguments go to engram-server unchanged (--listen, budgets, ...).
set -eu

die() {
    echo "docker-entrypoint: $*" >&2
    exit 64
}

replicas=${ENGRAM_REPLICAS:-}
case $replicas in
    '' | *[!0-9]* | 0*) die "ENGRAM_REPLICAS must be a positive integer (got '$replicas')" ;;
esac

# HOSTNAME comes from the environment (Docker and Kubernetes set it to the
# pod name), not from the shell.
# shellcheck disable=SC3028
pod=${POD_NAME:-${HOSTNAME:-}}
[ -n "$pod" ] || pod=$(hostname)
ordinal=${pod##*-}
case $ordinal in
    '' | *[!0-9]*) die "cannot take an ordinal from pod name '$pod' (want NAME-<n>)" ;;
    0) ;;
    0*) die "ordinal '$ordinal' of '$pod' has a leading zero" ;;
esac

shard=$((ordinal / replicas))
replica=$((ordinal % replicas))
shards=${ENGRAM_SHARDS:-}
if [ -n "$shards" ]; then
    case $shards in
        *[!0-9]* | 0*) die "ENGRAM_SHARDS must be a positive integer (got '$shards')" ;;
    esac
    [ "$ordinal" -lt $((shards * replicas)) ] ||
        die "pod '$pod' (ordinal $ordinal) is beyond $shards shards x $replicas replicas"
fi

cluster=${ENGRAM_CLUSTER:-/etc/engram/cluster.json}
data=${ENGRAM_DATA:-/var/lib/engram/data}
echo "docker-entrypoint: pod=$pod ordinal=$ordinal shard=$shard replica=$replica cluster=$cluster" >&2
exec /usr/local/bin/engram-server --data "$data" --cluster "$cluster" --shard "$shard" "$@"
