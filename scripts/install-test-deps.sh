#!/usr/bin/env bash
# Install what the end-to-end suite (tests/) needs on a Debian machine, idempotently:
#   apt:  dcmtk (storescu, findscu, getscu, movescu, storescp, echoscu, dcmcjpeg), dicom3tools,
#         openssl (the CLI: test_dicom_tls.py makes its CA and certificates with it),
#         orthanc + orthanc-dicomweb (test_orthanc_peer.py; the benchmarks compare with it),
#         postgresql (server and psql: scripts/pg-test-server.sh makes throwaway servers for
#         the PostgreSQL index's tests; the packaged service itself is not used)
#   PyPI: tests/requirements.txt (pytest, pydicom, pynetdicom, codecs for gen_dataset.py,
#         moto[server] with boto3: an S3-compatible server for the S3 blob store's tests)
# Whatever is already present is skipped, so a second run takes about a second.
set -euo pipefail

usage() { echo "usage: $0" >&2; exit 2; }
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage ;;
    *) echo "unknown argument: $arg" >&2; usage ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/tests/requirements.txt"
PY="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- Debian packages
apt_pkgs=(dcmtk dicom3tools openssl orthanc orthanc-dicomweb postgresql)
missing=()
for p in "${apt_pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ! "$PY" -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-test-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-test-deps: Debian packages present (${apt_pkgs[*]})"
fi
for tool in /usr/bin/{echoscu,storescu,findscu,getscu,movescu,storescp,dcmdump,dcmcjpeg,openssl} \
    /usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so; do
  [ -e "$tool" ] || { echo "install-test-deps: $tool missing after install" >&2; exit 1; }
done
# The PostgreSQL server binaries live in a versioned directory; pg-test-server.sh finds the
# newest one, and the tests run psql from it.
if ! pg_bin="$("$ROOT/scripts/pg-test-server.sh" bindir)"; then
  echo "install-test-deps: no PostgreSQL server binaries after installing postgresql" >&2
  exit 1
fi
for tool in "$pg_bin"/{initdb,pg_ctl,pg_isready,postgres,psql}; do
  [ -x "$tool" ] || { echo "install-test-deps: $tool missing after install" >&2; exit 1; }
done
# On a machine with systemd, installing orthanc starts the system service on 4242/8042 (and
# postgresql its cluster on 5432); the tests start their own on free ports and leave those alone.

# ---------------------------------------------------------------- Python packages
if "$PY" - "$REQ" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, requires, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        v = version(req.name)
    except PackageNotFoundError:
        bad.append(f"{req.name} (missing)")
        continue
    if not req.specifier.contains(v, prereleases=True):
        bad.append(f"{req.name} {v} (want {req.specifier})")
        continue
    # extras (moto[server]) bring packages of their own: each must be there too
    for extra in sorted(req.extras):
        for dep in map(Requirement, requires(req.name) or []):
            if dep.marker is None or not dep.marker.evaluate({"extra": extra}):
                continue
            try:
                version(dep.name)
            except PackageNotFoundError:
                bad.append(f"{req.name}[{extra}]: {dep.name} (missing)")
if bad:
    print("install-test-deps: to install: " + ", ".join(bad))
    sys.exit(1)
PYEOF
then
  echo "install-test-deps: Python packages present ($REQ)"
else
  pip_args=(-m pip install --quiet --disable-pip-version-check -r "$REQ")
  # Debian's own python3 is "externally managed" (PEP 668)
  if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    pip_args+=(--break-system-packages)
  fi
  "$PY" "${pip_args[@]}"
fi
# the S3 tests start moto's server (tests/test_s3_blobs.py, and scripts/test.sh for the store
# crate's conformance suite) and drive it with boto3
if ! "$PY" -c 'import moto.server, flask, flask_cors, boto3' 2>/dev/null \
    || ! "$PY" -m moto.server --help >/dev/null 2>&1; then
  echo "install-test-deps: moto[server] is not usable after install" >&2
  exit 1
fi
echo "install-test-deps: done"
