#!/bin/bash
# One-node SLURM cluster on localhost for Debian 12 (slurm-wlm 22.05.8), run as root, no systemd.
# Prereq: apt-get install -y slurm-wlm munge slurmdbd mariadb-server   (slurmdbd/mariadb only if ACCOUNTING=1)
# ACCOUNTING=1 (default): slurmdbd + MariaDB, so `sacct` works (submitit uses sacct for job state).
# Used by the `slurm`-marked tests (tests/pipeline/test_slurm.py) and by hand; stop with slurm/stop_cluster.sh.
# Idempotent: exits at once when the cluster already answers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"
if timeout 3 sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then echo "cluster already up"; exit 0; fi
ACCOUNTING=${ACCOUNTING:-1}
NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 9 / 10 ))
t0=$(date +%s.%N)

mkdir -p /etc/slurm /run/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
mkdir -m 755 -p /run/munge && chown munge:munge /run/munge
# munge key: Debian's postinst creates /etc/munge/munge.key; make one if missing
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }

if [ "$ACCOUNTING" = 1 ]; then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"; fi

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ddfp
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$(slurm_conf_plugins)
$ACCT
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$(slurm_conf_timing)
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

alive /run/munge/munged.pid || eval runuser -u munge -- /usr/sbin/munged "$QUIET"
waitfor "munge -n | unmunge"
echo "munged up ($(cat /run/munge/munged.pid))"

if [ "$ACCOUNTING" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  alive /run/mysqld/mysqld.pid || { setsid /usr/sbin/mariadbd --user=mysql --innodb-buffer-pool-size=64M </dev/null >/var/log/slurm/mariadb.log 2>&1 & }
  waitfor "mariadb-admin ping"
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  echo "mariadb up ($(cat /run/mysqld/mysqld.pid))"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable conf
  alive /run/slurm/slurmdbd.pid || eval /usr/sbin/slurmdbd "$QUIET"
  waitfor "sacctmgr -n show cluster"
  sacctmgr -i add cluster ddfp >/dev/null 2>&1 || true   # 'already exists' on a re-run
  echo "slurmdbd up ($(cat /run/slurm/slurmdbd.pid))"
fi

alive /run/slurm/slurmctld.pid || eval /usr/sbin/slurmctld "$QUIET"
alive /run/slurm/slurmd.pid || eval /usr/sbin/slurmd -N localhost "$QUIET"      # node name 'localhost' whatever the machine's hostname is
waitfor "sinfo -h -o %T | grep -q -E '^idle'"
echo "slurmctld ($(cat /run/slurm/slurmctld.pid)) + slurmd ($(cat /run/slurm/slurmd.pid)) up; cluster ready in $(since "$t0") s"
sinfo
