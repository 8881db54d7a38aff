#!/bin/bash
# Stop the daemons started by start_cluster.sh, by PID file (never by name).
stop() {  # $1 = pidfile
  [ -f "$1" ] || return 0
  local p; p=$(cat "$1")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && echo "still running: $p ($1)" || echo "stopped $p ($1)"
  fi
}
stop /run/slurm/slurmd.pid
stop /run/slurm/slurmctld.pid
stop /run/slurm/slurmdbd.pid
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
