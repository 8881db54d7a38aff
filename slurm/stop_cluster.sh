#!/bin/bash
# Stop the daemons started by start_cluster.sh, by PID file (never by name).
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"
stop /run/slurm/slurmd.pid
stop /run/slurm/slurmctld.pid
stop /run/slurm/slurmdbd.pid
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
