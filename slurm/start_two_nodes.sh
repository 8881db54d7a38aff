#!/bin/bash
# A second, separate SLURM cluster of TWO nodes on this one machine (Debian 12, slurm-wlm 22.05.8),
# run as root, no systemd: for multi-node jobs (tests/pipeline/test_multinode.py) and by hand.
# It shares nothing with slurm/start_cluster.sh's cluster, so stopping either leaves the other
# working: its own munged (own socket, same key), its own config ($DIR/slurm.conf: use it with
# SLURM_CONF=$DIR/slurm.conf), ClusterName ddfp2n,
# ports 7817 (slurmctld), 7818 and 7819 (one slurmd per node), state, spool, pid and log files
# under $DIR. No accounting (no slurmdbd): sacct answers nothing, so submitit knows a job is over
# by its result files, and squeue/scontrol show the live state.
# Nodes: `localhost` (127.0.0.1) and `n2` (127.0.0.2), one slurmd each (slurmd -N, its own Port;
# %n in the slurmd paths is the node name), half the CPUs and memory each. A job's first host is
# its rendezvous address (submitit's MASTER_ADDR), so it must resolve on any machine: `localhost`
# comes first in a job's node list (sorted), and `n2` is reached by its NodeAddr only. `n2` is
# defined first: with `localhost` as the only node defined so far, SLURM takes any node name for
# it and rejects `n2` as a duplicate. Job ids start at 700000, apart from the other cluster's:
# submitit's watcher caches job states by id in one table for both clusters.
# Idempotent: exits at once when both nodes answer. Stop with slurm/stop_two_nodes.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"
DIR=${DDFP_TWO_NODES_DIR:-/tmp/ddfp-two-nodes}
export SLURM_CONF=$DIR/slurm.conf
up() { [ -f "$SLURM_CONF" ] && [ "$(timeout 3 sinfo -h -N -o %T 2>/dev/null | grep -c -E '^(idle|mixed|allocated)')" = 2 ]; }
if up; then echo "two-node cluster already up (SLURM_CONF=$SLURM_CONF)"; exit 0; fi
NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
CPUS=$(( NCPU > 1 ? NCPU / 2 : 1 ))
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 9 / 20 ))
t0=$(date +%s.%N)

mkdir -p "$DIR"/{run,state,spool,log}
# munged checks that its socket directory belongs to the munge user and is not world-writable.
install -d -m 755 -o munge -g munge "$DIR/munge"
[ -s /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key: apt-get install munge"; exit 1; }
SOCKET=$DIR/munge/munge.socket.2

cat > "$SLURM_CONF" <<CONF
ClusterName=ddfp2n
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
$(slurm_conf_plugins)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
FirstJobId=700000
SlurmctldPort=7817
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
$(slurm_conf_timing)
NodeName=n2 NodeAddr=127.0.0.2 Port=7819 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=localhost NodeAddr=127.0.0.1 Port=7818 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=two Nodes=localhost,n2 Default=YES MaxTime=INFINITE State=UP
CONF

alive "$DIR/munge/munged.pid" || eval runuser -u munge -- /usr/sbin/munged --socket="$SOCKET" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" "$QUIET"
waitfor "munge -S $SOCKET -n | unmunge -S $SOCKET"
echo "munged up ($(cat "$DIR/munge/munged.pid"), socket $SOCKET)"
alive "$DIR/run/slurmctld.pid" || eval /usr/sbin/slurmctld -f "$SLURM_CONF" "$QUIET"
for node in localhost n2; do
  mkdir -p "$DIR/spool/$node"
  alive "$DIR/run/slurmd-$node.pid" || eval /usr/sbin/slurmd -f "$SLURM_CONF" -N "$node" "$QUIET"
done
waitfor up
echo "two-node cluster ready in $(since "$t0") s (SLURM_CONF=$SLURM_CONF)"
sinfo -N
