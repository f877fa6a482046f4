# Shared by .ci/slurm-up and .ci/slurm-down (sourced, not run): finding our daemons, and the
# namespaced network of a multi-node cluster. The caller sets DIR and CONF and defines log().
#
# $DIR/net is the manifest of what slurm-up created on the host (written before it creates anything,
# so a crash half-way is still cleaned up by slurm-down or the next slurm-up):
#   bridge <name> <address/24>
#   node <name> <address> <host-side veth>        (namespace name = node name = its hostname)
#   hosts <tag>                                   (/etc/hosts lines ending in this tag are ours)

UTS_DIR=/run/osmi-uts          # persistent UTS namespaces (one hostname per node), like /run/netns
HOSTS_LOCK=/run/osmi-slurm-hosts.lock

# our_daemons: "<pid> <command line>" of every daemon of this config, in one /proc scan. slurm-up
# starts them as `/usr/sbin/slurmctld -D -f $CONF` and `/usr/sbin/slurmd -D -N <node> -f $CONF`, so
# stale daemons of this config are found even when the pid files are gone.
our_daemons() {
    [[ -n ${CONF_RE:-} ]] || CONF_RE=$(sed 's/[][\.*^$(){}+?|/]/\\&/g' <<<"$CONF")
    pgrep -a -x -f "/usr/sbin/(slurmctld -D|slurmd -D -N [^ ]+) -f $CONF_RE" || true
}

# daemon_pids <slurmctld|slurmd> [node] [table]: pids of our daemons of that kind (every slurmd
# without a node), from the table our_daemons printed (scanned now if not given).
daemon_pids() {
    local name=$1 node=${2:-} table pid cmd
    table=${3-$(our_daemons)}
    while read -r pid cmd; do
        case $name in
            slurmctld) [[ $cmd == "/usr/sbin/slurmctld -D -f $CONF" ]] ;;
            *) if [[ -n $node ]]; then [[ $cmd == "/usr/sbin/slurmd -D -N $node -f $CONF" ]]
               else [[ $cmd == "/usr/sbin/slurmd -D -N "*" -f $CONF" ]]; fi ;;
        esac && [[ -n $pid ]] && echo "$pid"
    done <<<"$table"
    return 0
}

# stop_pids <seconds> <pid>...: SIGTERM, wait, then SIGKILL what is left.
stop_pids() {
    local wait_s=$1 pid end
    shift
    (($#)) || return 0
    kill "$@" 2>/dev/null || true
    end=$((SECONDS + wait_s))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= end)); then
                log "pid $pid ignored SIGTERM for $wait_s s; sending SIGKILL"
                kill -9 "$pid" 2>/dev/null || true
                sleep 0.2
                break
            fi
            sleep 0.1
        done
    done
}

# stop_daemons <seconds>: every slurmd and the slurmctld of this config, all at once (each takes
# about 2 s to exit on SIGTERM).
stop_daemons() {
    local slurmd ctld
    slurmd=$(daemon_pids slurmd)
    ctld=$(daemon_pids slurmctld)
    # shellcheck disable=SC2086
    [[ -z $slurmd ]] || log "stopping slurmd (pid $(echo $slurmd))"
    [[ -z $ctld ]] || log "stopping slurmctld (pid $ctld)"
    # shellcheck disable=SC2086
    stop_pids "$1" $slurmd $ctld
    rm -f "$DIR"/run/*.launched
}

# hosts_lines <tag>: our /etc/hosts lines (those ending in <tab><tag>).
hosts_lines() { awk -v suffix="	$1" 'substr($0, length($0) - length(suffix) + 1) == suffix' /etc/hosts 2>/dev/null || true; }

# in_netns <pid> <node>: does the process live in the node's network namespace? (-ef: same inode)
in_netns() { [[ -e /run/netns/$2 && /proc/$1/ns/net -ef /run/netns/$2 ]]; }

# remove_hosts_lines <tag>: drop our /etc/hosts lines, those that end in <tab><tag> (a tag is
# "# osmi-slurm:<dir>"), in place: /etc/hosts may be a bind mount.
remove_hosts_lines() {
    local tag=$1 kept
    [[ $tag == "# osmi-slurm:/"* ]] || { log "refusing to edit /etc/hosts for tag '$tag'"; return 1; }
    grep -qF -- "	$tag" /etc/hosts 2>/dev/null || return 0
    (
        flock -w 30 8 || exit 1
        kept=$(awk -v suffix="	$tag" 'substr($0, length($0) - length(suffix) + 1) != suffix' /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    ) 8>"$HOSTS_LOCK"
}

# kill_namespace_pids <node>: end every process left in the node's namespace (test leftovers once
# slurmd is stopped), so the namespace can go.
kill_namespace_pids() {
    local pids
    [[ -e /run/netns/$1 ]] || return 0
    pids=$(ip netns pids "$1" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    log "ending processes left in namespace $1: $(echo $pids)"
    # shellcheck disable=SC2086
    stop_pids 3 $pids
}

# remove_node_net <node> <veth>: namespace (and with it eth0 and its veth peer), UTS namespace.
remove_node_net() {
    local node=$1 veth=$2
    kill_namespace_pids "$node"
    [[ -e /run/netns/$node ]] && { ip netns del "$node" 2>/dev/null || log "could not delete namespace $node"; }
    ip link show dev "$veth" >/dev/null 2>&1 && { ip link del "$veth" 2>/dev/null || true; }
    if [[ -e $UTS_DIR/$node ]]; then
        mountpoint -q "$UTS_DIR/$node" && umount "$UTS_DIR/$node" 2>/dev/null
        rm -f "$UTS_DIR/$node"
    fi
    return 0
}

# remove_net: tear down everything the manifest $DIR/net names, then the manifest. Daemons first.
remove_net() {
    local kind a b c rest
    [[ -f $DIR/net ]] || return 0
    while read -r kind a b c; do
        if [[ $kind == node ]]; then remove_node_net "$a" "$c"; fi
    done <"$DIR/net"
    while read -r kind rest; do
        if [[ $kind == hosts ]]; then remove_hosts_lines "$rest"; fi
    done <"$DIR/net"
    while read -r kind a b c; do
        if [[ $kind == bridge ]] && ip link show dev "$a" >/dev/null 2>&1; then
            ip link del "$a" || log "could not delete bridge $a"
        fi
    done <"$DIR/net"
    rm -f "$DIR/net"
}
