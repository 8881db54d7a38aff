#!/bin/sh
# The Debian packages the marked tests need: a one-node SLURM cluster (slurm), headless Chromium and
# its driver (browser), PostgreSQL (postgres). Installed when this can (root, or password-less sudo,
# with apt-get); otherwise it says so and the test run ends by naming what it skipped.
set -eu
need=""
command -v sbatch >/dev/null 2>&1 || need="$need slurm-wlm munge slurmdbd mariadb-server"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium chromium-driver"
command -v pg_ctlcluster >/dev/null 2>&1 || need="$need postgresql"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root="sudo -n"
else
  echo "note: cannot install$need (needs root); the tests that use them will be skipped." >&2
  echo "      'sudo make test' installs them and runs everything." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; install$need by hand to run the service tests." >&2
  exit 0
fi
echo "installing the service tests' Debian packages:$need"
# shellcheck disable=SC2086  # $need is a word list on purpose
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $need >/dev/null
