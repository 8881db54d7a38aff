# Shell helpers of the local SLURM clusters (start_cluster.sh, start_two_nodes.sh and their stop
# scripts); sourced, not run.
# waitfor CMD: retry CMD (eval'd) every 0.2 s until it succeeds; fail the script after 30 s.
waitfor() { local n=0; until eval "$1" >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 150 ] && { echo "timeout: $1"; exit 1; }; sleep 0.2; done; }
# alive PIDFILE: the daemon that wrote PIDFILE still runs.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Daemons get /dev/null for stdio (they log to files): a caller reading a start script's output
# (pytest's capture, a pipe) must see EOF when the script ends.
QUIET='</dev/null >/dev/null 2>&1'
# since T0: seconds elapsed since T0 (date +%s.%N), one decimal.
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN {printf "%.1f", a - b}'; }
# stop PIDFILE: TERM the daemon that wrote PIDFILE (by PID, never by name) and wait up to 10 s.
stop() {
  [ -f "$1" ] || return 0
  local p; p=$(cat "$1")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && echo "still running: $p ($1)" || echo "stopped $p ($1)"
  fi
}
# The slurm.conf lines both local clusters share: one machine, no cgroups, no MPI, no mail...
slurm_conf_plugins() {
  printf '%s\n' MpiDefault=none ProctrackType=proctrack/linuxproc TaskPlugin=task/none SelectType=select/cons_tres \
    SelectTypeParameters=CR_Core SchedulerType=sched/backfill SwitchType=switch/none JobCompType=jobcomp/none \
    MailProg=/bin/true
}
# ...and the same timeouts (KillWait: a stopped job's time to save before SIGKILL).
slurm_conf_timing() {
  printf '%s\n' SlurmctldDebug=info SlurmdDebug=info InactiveLimit=0 KillWait=30 MinJobAge=300 \
    SlurmctldTimeout=120 SlurmdTimeout=300 Waittime=0
}

