#!/bin/bash
# Stop the daemons started by start_two_nodes.sh, by PID file (never by name); its files stay in $DIR.
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"
DIR=${DDFP_TWO_NODES_DIR:-/tmp/ddfp-two-nodes}
stop "$DIR/run/slurmd-n2.pid"
stop "$DIR/run/slurmd-localhost.pid"
stop "$DIR/run/slurmctld.pid"
stop "$DIR/munge/munged.pid"
