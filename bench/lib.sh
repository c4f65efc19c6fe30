#!/usr/bin/env bash
# Shared shell of the benchmarks (sourced, not run): tools and paths, arithmetic, process
# bookkeeping (everything started is stopped by PID on exit), readiness waits, RSS sampling,
# the cached CT corpus and the storescu ingest measurement.
#
# The sourcing script sets BENCH_DIR, REPO, OUT (results), LOGS, GEN (gen_dataset.py),
# INSTANCES, KEEP and INSTALL before calling anything here.
# shellcheck shell=bash disable=SC2034

# ---------------------------------------------------------------------------------------------
# Tools. dcmtk is always called by absolute path: pynetdicom installs console scripts with the
# same names (storescu, findscu, ...) that take other arguments.
# ---------------------------------------------------------------------------------------------
STORESCU=/usr/bin/storescu
STORESCP=/usr/bin/storescp
FINDSCU=/usr/bin/findscu
GETSCU=/usr/bin/getscu
ECHOSCU=/usr/bin/echoscu
PACSGRID="$REPO/target/release/pacsgrid"
CALLING_AE=BENCHSCU
# Max PDU every DICOM peer advertises for receiving (dcmtk's ceiling, storescu never sends larger
# PDUs). storescp and Orthanc default to 16 KB, pacsgrid to 256 KB: equalise the transport.
PDU=131072
HOST=127.0.0.1

# Every dcmtk process (clients, storescp) and Orthanc (dcmtk inside) must run without Nagle's
# algorithm, or each C-STORE stalls ~40 ms on delayed ACKs. Exported, so every child inherits it.
export TCP_NODELAY=1

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
# fdiv A B [digits]: A/B as a decimal, "n/a" when either is missing or B is 0.
fdiv() {
    awk -v a="${1:-}" -v b="${2:-}" -v d="${3:-2}" 'BEGIN {
        if (a == "" || b == "" || a == "n/a" || b == "n/a" || b + 0 == 0) { print "n/a"; exit }
        printf "%.*f\n", d, a / b }'
}
qcmd() { local q; q=$(printf '%q ' "$@"); echo "${q% }"; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a - b }'; }
# median VALUES...: the median of the numbers given, "n/a" for none.
median() { printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
fmul() { awk -v a="$1" -v b="$2" -v d="${3:-3}" 'BEGIN { printf "%.*f\n", d, a * b }'; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything started here is killed on exit, by PID.
# ---------------------------------------------------------------------------------------------
PIDS=()
WORK=""
PG_DIR=""
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop on TERM in 10 s; KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    # a PostgreSQL server started for the run (ingest.sh's pacsgrid-pg target)
    if [ -n "${PG_DIR:-}" ]; then "$REPO/scripts/pg-test-server.sh" stop "$PG_DIR" >/dev/null 2>&1 || true; fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then
            log "kept temp dir $WORK"
        else
            rm -rf "$WORK"
            [ -z "${OUT:-}" ] || { mkdir -p "$OUT" && date +%s >"$OUT/.last-cleanup"; } || true
        fi
    fi
    exit "$rc"
}

# settle_deletions: waits until the last run's clean-up is 31 s old. ext4 without a journal
# skips inodes freed in the last 30 s when it allocates new ones, so files created right
# after a large `rm -rf` cost more, and a timed step would measure the previous run's
# clean-up (see discard in grid.sh).
settle_deletions() {
    local last age
    last=$(cat "$OUT/.last-cleanup" 2>/dev/null || echo 0)
    age=$(( $(date +%s) - last ))
    if [ "$age" -lt 31 ]; then
        log "the previous run removed its files ${age} s ago; waiting $((31 - age)) s (see settle_deletions in lib.sh)"
        sleep $((31 - age))
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# setup_python: PY = a Python that imports what gen_dataset.py needs (python3 or $PYTHON if it
# has everything, else a venv under $OUT/venv, made unless INSTALL=0).
setup_python() {
    local mods="import pydicom, numpy, pylibjpeg, rle, openjpeg, jpeg_ls"
    local pkgs="pydicom numpy pylibjpeg pylibjpeg-rle pylibjpeg-openjpeg pyjpegls"
    PY="${PYTHON:-python3}"
    if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c "$mods" 2>/dev/null; then
        PY="$OUT/venv/bin/python"
        if ! [ -x "$PY" ] || ! "$PY" -c "$mods" 2>/dev/null; then
            [ "$INSTALL" = 1 ] || die "python deps missing ($pkgs) (run without --no-install)"
            if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
                log "apt-get install python3-venv python3-pip"
                local sudo=""
                [ "$(id -u)" = 0 ] || sudo=sudo
                $sudo apt-get update -qq
                DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv python3-pip >/dev/null
            fi
            log "pip install $pkgs (venv $OUT/venv)"
            rm -rf "$OUT/venv"
            python3 -m venv "$OUT/venv"
            "$OUT/venv/bin/pip" install -q --upgrade pip >/dev/null
            # shellcheck disable=SC2086
            "$OUT/venv/bin/pip" install -q $pkgs
            "$PY" -c "$mods" || die "python deps still missing after pip install"
        fi
    fi
}

free_port() {
    "$PY" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# wait_dicom AE PORT PID NAME: wait (60 s) until a C-ECHO succeeds.
wait_dicom() {
    local ae="$1" port="$2" pid="$3" name="$4" i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see $LOGS/$name.log)"
        if "$ECHOSCU" -aet "$CALLING_AE" -aec "$ae" -to 2 "$HOST" "$port" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$name did not answer C-ECHO on port $port within 60 s"
}
# wait_http URL PID NAME: wait (60 s) for a 200.
wait_http() {
    local url="$1" pid="$2" name="$3" i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see $LOGS/$name.log)"
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    die "$name: $url not ready within 60 s"
}

# rss_sampler PID FILE: writes the peak VmRSS (kB) of PID to FILE, sampling every 0.2 s.
rss_sampler() {
    local pid="$1" file="$2" peak=0 r
    echo 0 >"$file"
    while kill -0 "$pid" 2>/dev/null; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        if [ -n "$r" ] && [ "$r" -gt "$peak" ]; then peak=$r; echo "$peak" >"$file"; fi
        sleep 0.2
    done
}
rss_now() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
kb_to_mb() { awk -v k="$1" 'BEGIN { if (k !~ /^[0-9]+$/) print "n/a"; else printf "%.0f\n", k / 1024 }'; }

# ---------------------------------------------------------------------------------------------
# 1. Corpus
# ---------------------------------------------------------------------------------------------
# Shape: studies of 2 series x 50 CT images (100 instances, ~52 MB each), 2 studies per patient
# when possible. 2000 -> 10 patients x 2 studies x 2 series x 50 instances (gen_dataset.py's own
# benchmark corpus). Other counts fall back to one series of N instances.
corpus_shape() {
    local n="$1"
    if [ $((n % 200)) = 0 ]; then echo "$((n / 200)) 2 2 50"
    elif [ $((n % 100)) = 0 ]; then echo "$((n / 100)) 1 2 50"
    else echo "1 1 1 $n"; fi
}
make_corpus() {
    read -r C_PATIENTS C_STUDIES C_SERIES C_PER_SERIES <<<"$(corpus_shape "$INSTANCES")"
    CORPUS="$OUT/corpus-ct$INSTANCES"
    GEN_ARGS=(--out "$CORPUS" --patients "$C_PATIENTS" --studies "$C_STUDIES" --series "$C_SERIES"
              --instances "$C_PER_SERIES" --modality-mix CT=1 --ts-mix explicit=1)
    local stamp
    stamp="$(sha256sum "$GEN" | cut -c1-16) ${GEN_ARGS[*]:2}"
    if [ -f "$CORPUS/.bench-stamp" ] && [ "$(cat "$CORPUS/.bench-stamp")" = "$stamp" ] \
        && [ -f "$CORPUS/manifest.json" ]; then
        log "corpus: cached $CORPUS"
    else
        log "corpus: generating $INSTANCES CT instances -> $CORPUS"
        local t0 t1
        t0=$(now)
        "$PY" "$GEN" "${GEN_ARGS[@]}" --force >"$LOGS/gen_dataset.log" 2>&1 \
            || { cat "$LOGS/gen_dataset.log" >&2; die "gen_dataset.py failed"; }
        t1=$(now)
        echo "$stamp" >"$CORPUS/.bench-stamp"
        log "corpus: generated in $(fsub "$t1" "$t0") s"
    fi
    CORPUS_FILES=$(find "$CORPUS" -name '*.dcm' -type f | wc -l)
    CORPUS_BYTES=$(find "$CORPUS" -name '*.dcm' -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    [ "$CORPUS_FILES" = "$INSTANCES" ] || die "corpus has $CORPUS_FILES files, expected $INSTANCES (delete $CORPUS)"
    CORPUS_MB=$(fdiv "$CORPUS_BYTES" 1000000 1)
    # Query targets from the manifest: the first patient and its first study.
    read -r Q_PATIENT Q_STUDY Q_STUDY_INSTANCES Q_PATIENT_STUDIES N_STUDIES Q_STUDY_BYTES <<<"$("$PY" - "$CORPUS/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
st = m["studies"]
p = st[0]["PatientID"]
print(p, st[0]["StudyInstanceUID"], st[0]["instances"], sum(1 for s in st if s["PatientID"] == p), len(st),
      st[0]["bytes"])
EOF
)"
    # Warm the page cache so every target reads the corpus from memory.
    find "$CORPUS" -name '*.dcm' -type f -exec cat {} + >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Ingest: one storescu association pushing the whole corpus
# ---------------------------------------------------------------------------------------------
declare -A R  # results: R[target.key]

# ingest NAME AE PORT PID [STORESCU-OPTION...]: extra options (e.g. +tls ...) go before the address.
ingest() {
    local name="$1" ae="$2" port="$3" pid="$4" t0 t1 spid ok
    shift 4
    local cmd=("$STORESCU" -v -nh -pdu "$PDU" -aet "$CALLING_AE" -aec "$ae" "$@" +sd +r +sp '*.dcm' "$HOST" "$port" "$CORPUS")
    R[$name.cmd_store]="TCP_NODELAY=1 $(qcmd "${cmd[@]}")"
    R[$name.rss_idle]=$(rss_now "$pid")
    rss_sampler "$pid" "$WORK/$name.rss" &
    spid=$!
    PIDS+=("$spid")
    log "$name: C-STORE $INSTANCES instances (one association)"
    t0=$(now)
    "${cmd[@]}" >"$LOGS/$name.storescu.log" 2>&1 || log "$name: storescu exited with status $?"
    t1=$(now)
    sleep 0.3  # one more RSS sample after the last response
    stop_pid "$spid"
    ok=$(grep -c 'Received Store Response (Success)' "$LOGS/$name.storescu.log" || true)
    R[$name.stored_ok]=$ok
    R[$name.ingest_s]=$(fsub "$t1" "$t0")
    R[$name.ingest_ips]=$(fdiv "$INSTANCES" "${R[$name.ingest_s]}" 1)
    R[$name.ingest_mbps]=$(fdiv "$(fdiv "$CORPUS_BYTES" 1000000 3)" "${R[$name.ingest_s]}" 1)
    R[$name.rss_peak_kb]=$(cat "$WORK/$name.rss")
    R[$name.rss_peak]=$(kb_to_mb "${R[$name.rss_peak_kb]}")
    log "$name: ${R[$name.ingest_s]} s, ${R[$name.ingest_ips]} inst/s, ${R[$name.ingest_mbps]} MB/s," \
        "peak RSS ${R[$name.rss_peak]} MB, $ok/$INSTANCES stored OK"
    [ "$ok" = "$INSTANCES" ] || log "WARNING: $name: only $ok of $INSTANCES C-STOREs succeeded (see $LOGS/$name.storescu.log)"
}

finish_server() {  # finish_server NAME PID
    local name="$1" pid="$2" t0
    R[$name.rss_end]=$(kb_to_mb "$(rss_now "$pid")")
    t0=$(now)
    stop_pid "$pid"
    log "$name: stopped in $(fsub "$(now)" "$t0") s"
}
