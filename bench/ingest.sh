#!/usr/bin/env bash
# pacsgrid ingest / query / retrieve benchmark against dcmtk storescp (raw sink) and Orthanc
# (with its DICOMweb plugin): DIMSE ingest, C-FIND, C-GET, WADO-RS study retrieval, QIDO-RS search.
# Target pacsgrid-pg is the same node with its index in PostgreSQL (a throwaway local server from
# scripts/pg-test-server.sh) instead of SQLite.
#
#   bench/ingest.sh [--instances N] [--keep] [--targets LIST] [--no-build] [--no-install]
#                   [--find-repeats N] [--get-repeats N] [--web-repeats N]
#
# See bench/README.md for what it measures and how to read the results.
# Results: printed at the end and written to bench/out/results.md (logs in bench/out/logs/).
set -Eeuo pipefail

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
INSTANCES=2000
KEEP=0
TARGETS="storescp,orthanc,pacsgrid"
BUILD=1
INSTALL=1
FIND_REPEATS=50
GET_REPEATS=3
WEB_REPEATS=5

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --instances) INSTANCES="$2"; shift 2 ;;
        --instances=*) INSTANCES="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --targets=*) TARGETS="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        --find-repeats) FIND_REPEATS="$2"; shift 2 ;;
        --get-repeats) GET_REPEATS="$2"; shift 2 ;;
        --web-repeats) WEB_REPEATS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ingest.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$INSTANCES" in ''|*[!0-9]*) echo "ingest.sh: --instances needs a positive integer" >&2; exit 2 ;; esac
[ "$INSTANCES" -ge 1 ] || { echo "ingest.sh: --instances must be >= 1" >&2; exit 2; }
for t in ${TARGETS//,/ }; do
    case "$t" in storescp|orthanc|pacsgrid|pacsgrid-pg) ;; *) echo "ingest.sh: unknown target: $t" >&2; exit 2 ;; esac
done
want() { case ",$TARGETS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------------------------------------
# Paths; tools, helpers, corpus and the ingest measurement are in lib.sh (shared with
# security.sh).
# ---------------------------------------------------------------------------------------------
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
GEN="$(cd "$REPO/../shared/data" 2>/dev/null && pwd)/gen_dataset.py"
OUT="$BENCH_DIR/out"
LOGS="$OUT/logs"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------------------------------------
# 0. Dependencies
# ---------------------------------------------------------------------------------------------
install_deps() {
    local missing=() p
    for p in dcmtk orthanc orthanc-dicomweb; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$INSTALL" = 1 ] || die "missing Debian packages: ${missing[*]} (run without --no-install)"
        log "apt-get install ${missing[*]}"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    for p in "$STORESCU" "$STORESCP" "$FINDSCU" "$GETSCU" "$ECHOSCU"; do
        [ -x "$p" ] || die "$p not found (Debian package dcmtk)"
    done
    ORTHANC_BIN="$(command -v Orthanc || true)"
    [ -n "$ORTHANC_BIN" ] || ORTHANC_BIN=/usr/sbin/Orthanc
    [ -x "$ORTHANC_BIN" ] || die "Orthanc not found (Debian package orthanc)"
    ORTHANC_DICOMWEB=""
    for p in /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/plugins/libOrthancDicomWeb.so; do
        [ -f "$p" ] && { ORTHANC_DICOMWEB="$p"; break; }
    done

    setup_python  # Python for gen_dataset.py
    command -v curl >/dev/null 2>&1 || {
        [ "$INSTALL" = 1 ] || die "curl missing"
        apt-get install -y -qq curl >/dev/null
    }
}

# 1. Corpus: make_corpus in lib.sh

# ---------------------------------------------------------------------------------------------
# 2-4. Per-target measurements
# ---------------------------------------------------------------------------------------------

# find_count NAME AE PORT KEYS...: runs one C-FIND, prints the number of matches.
find_count() {
    local name="$1" ae="$2" port="$3"; shift 3
    "$FINDSCU" -v -S -aet "$CALLING_AE" -aec "$ae" "$@" "$HOST" "$port" >"$WORK/$name.findcount.log" 2>&1 || true
    grep -c 'Find Response.*(Pending)' "$WORK/$name.findcount.log" || true
}

# query NAME AE PORT: study-level C-FIND (per-process and per-association timings) and C-GET.
query() {
    local name="$1" ae="$2" port="$3" t0 t1 i n got
    local fkeys=(-k QueryRetrieveLevel=STUDY -k StudyInstanceUID -k "PatientID=$Q_PATIENT")
    local fcmd=("$FINDSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec "$ae" "${fkeys[@]}" "$HOST" "$port")
    R[$name.cmd_find]="TCP_NODELAY=1 $(qcmd "${fcmd[@]}")"

    # Sanity: all studies, and the queried patient's studies, are found.
    n=$(find_count "$name" "$ae" "$port" -k QueryRetrieveLevel=STUDY -k StudyInstanceUID)
    cp "$WORK/$name.findcount.log" "$LOGS/$name.find-all.log"
    R[$name.studies_found]=$n
    [ "$n" = "$N_STUDIES" ] || log "WARNING: $name: C-FIND of all studies found $n, expected $N_STUDIES"
    n=$(find_count "$name" "$ae" "$port" "${fkeys[@]}")
    cp "$WORK/$name.findcount.log" "$LOGS/$name.find-patient.log"
    R[$name.find_matches]=$n
    [ "$n" = "$Q_PATIENT_STUDIES" ] || log "WARNING: $name: C-FIND PatientID=$Q_PATIENT found $n studies, expected $Q_PATIENT_STUDIES"

    log "$name: C-FIND x$FIND_REPEATS (one findscu process and association each)"
    t0=$(now)
    for i in $(seq 1 "$FIND_REPEATS"); do
        "${fcmd[@]}" >>"$WORK/$name.find.log" 2>&1 || log "$name: findscu exited with status $?"
    done
    t1=$(now)
    R[$name.find_ms]=$(fmul "$(fdiv "$(fsub "$t1" "$t0")" "$FIND_REPEATS" 6)" 1000 2)

    log "$name: C-FIND x$FIND_REPEATS (one association, findscu --repeat)"
    t0=$(now)
    "$FINDSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec "$ae" --repeat "$FIND_REPEATS" "${fkeys[@]}" "$HOST" "$port" \
        >>"$WORK/$name.find.log" 2>&1 || log "$name: findscu --repeat exited with status $?"
    t1=$(now)
    R[$name.find_assoc_ms]=$(fmul "$(fdiv "$(fsub "$t1" "$t0")" "$FIND_REPEATS" 6)" 1000 2)
    grep -E '^[EF]:' "$WORK/$name.find.log" | sort | uniq -c | head -20 >"$LOGS/$name.find-errors.log" || true

    local gdir="$WORK/$name.get" gcmd total=0 best="" s
    gcmd=("$GETSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec "$ae" -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$Q_STUDY"
          -od "$gdir" "$HOST" "$port")
    R[$name.cmd_get]="TCP_NODELAY=1 $(qcmd "${gcmd[@]}")"
    log "$name: C-GET of study $Q_STUDY ($Q_STUDY_INSTANCES instances) x$GET_REPEATS"
    for i in $(seq 1 "$GET_REPEATS"); do
        rm -rf "$gdir"; mkdir -p "$gdir"
        t0=$(now)
        "${gcmd[@]}" >"$LOGS/$name.getscu.log" 2>&1 || log "$name: getscu exited with status $?"
        t1=$(now)
        s=$(fsub "$t1" "$t0")
        total=$(awk -v a="$total" -v b="$s" 'BEGIN { print a + b }')
        if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
        got=$(find "$gdir" -type f | wc -l)
        [ "$got" = "$Q_STUDY_INSTANCES" ] \
            || log "WARNING: $name: C-GET run $i received $got files, expected $Q_STUDY_INSTANCES (see $LOGS/$name.getscu.log)"
    done
    R[$name.get_received]=$got
    R[$name.get_s]=$(fdiv "$total" "$GET_REPEATS" 3)
    R[$name.get_best_s]=$best
    rm -rf "$gdir"
    log "$name: C-FIND ${R[$name.find_ms]} ms/query (${R[$name.find_assoc_ms]} ms in one association)," \
        "C-GET ${R[$name.get_s]} s (best $best s), $got/$Q_STUDY_INSTANCES files"
}

# dicomweb NAME BASE_URL: WADO-RS retrieval of the query study (bytes as stored) and QIDO-RS
# study search by PatientID on one keep-alive connection, both with curl.
dicomweb() {
    local name="$1" base="$2" i t total=0 best="" size parts qurl wurl
    local accept='multipart/related; type="application/dicom"; transfer-syntax=*'
    wurl="$base/studies/$Q_STUDY"
    R[$name.cmd_wado]="curl -s -H $(qcmd "Accept: $accept") -o /dev/null $wurl"
    log "$name: WADO-RS study $Q_STUDY ($Q_STUDY_INSTANCES instances) x$WEB_REPEATS"
    # One checked download to a file (parts, size), then timed runs into /dev/null so the
    # client's disk writes do not hide the server's speed.
    curl -sS -H "Accept: $accept" -o "$WORK/$name.wado" "$wurl" 2>>"$LOGS/$name.wado.log" \
        || log "WARNING: $name: WADO-RS request failed (see $LOGS/$name.wado.log)"
    for i in $(seq 1 "$WEB_REPEATS"); do
        t=$(curl -sS -H "Accept: $accept" -o /dev/null -w '%{time_total}' "$wurl" 2>>"$LOGS/$name.wado.log" || echo "")
        [ -n "$t" ] || { log "WARNING: $name: WADO-RS request failed (see $LOGS/$name.wado.log)"; continue; }
        total=$(awk -v a="$total" -v b="$t" 'BEGIN { print a + b }')
        if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
    done
    size=$(stat -c %s "$WORK/$name.wado" 2>/dev/null || echo 0)
    parts=$(grep -a -c -i '^content-type: *application/dicom' "$WORK/$name.wado" || true)
    R[$name.wado_parts]=$parts
    R[$name.wado_bytes]=$size
    R[$name.wado_s]=$(fdiv "$total" "$WEB_REPEATS" 3)
    R[$name.wado_best_s]=$best
    R[$name.wado_mbps]=$(fdiv "$(fdiv "$Q_STUDY_BYTES" 1000000 3)" "${R[$name.wado_s]}" 1)
    [ "$parts" = "$Q_STUDY_INSTANCES" ] \
        || log "WARNING: $name: WADO-RS answer has $parts parts, expected $Q_STUDY_INSTANCES"
    [ "$size" -ge "$Q_STUDY_BYTES" ] \
        || log "WARNING: $name: WADO-RS answer has $size bytes, less than the study's $Q_STUDY_BYTES"
    rm -f "$WORK/$name.wado"

    qurl="$base/studies?PatientID=$Q_PATIENT"
    R[$name.cmd_qido]="curl -s -H 'Accept: application/dicom+json' $qurl"
    curl -sS -H 'Accept: application/dicom+json' "$qurl" -o "$WORK/$name.qido" 2>>"$LOGS/$name.qido.log" || true
    R[$name.qido_matches]=$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/$name.qido" 2>/dev/null || echo "?")
    [ "${R[$name.qido_matches]}" = "$Q_PATIENT_STUDIES" ] \
        || log "WARNING: $name: QIDO-RS PatientID=$Q_PATIENT found ${R[$name.qido_matches]} studies, expected $Q_PATIENT_STUDIES"
    local args=()
    for i in $(seq 1 "$FIND_REPEATS"); do args+=(-o /dev/null "$qurl"); done
    log "$name: QIDO-RS x$FIND_REPEATS (one curl, one keep-alive connection)"
    local t0 t1
    t0=$(now)
    curl -sS -H 'Accept: application/dicom+json' "${args[@]}" 2>>"$LOGS/$name.qido.log" || log "$name: curl exited with status $?"
    t1=$(now)
    R[$name.qido_ms]=$(fmul "$(fdiv "$(fsub "$t1" "$t0")" "$FIND_REPEATS" 6)" 1000 2)
    log "$name: WADO-RS ${R[$name.wado_s]} s (best $best s, ${R[$name.wado_mbps]} MB/s, $parts parts)," \
        "QIDO-RS ${R[$name.qido_ms]} ms/query (${R[$name.qido_matches]} studies)"
}

run_storescp() {
    local port dir pid
    port=$(free_port)
    dir="$WORK/storescp"; mkdir -p "$dir"
    local cmd=("$STORESCP" -aet STORESCP -pdu "$PDU" +xa -od "$dir" "$port")
    R[storescp.cmd_serve]="TCP_NODELAY=1 $(qcmd "${cmd[@]}")"
    log "storescp: starting on port $port"
    "${cmd[@]}" >"$LOGS/storescp.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_dicom STORESCP "$port" "$pid" storescp
    ingest storescp STORESCP "$port" "$pid"
    R[storescp.files]=$(find "$dir" -type f | wc -l)
    finish_server storescp "$pid"
    [ "$KEEP" = 1 ] || rm -rf "$dir"
}

run_orthanc() {
    local dport hport dir pid plugins="[]"
    dport=$(free_port); hport=$(free_port)
    dir="$WORK/orthanc"; mkdir -p "$dir/storage" "$dir/index"
    [ -n "$ORTHANC_DICOMWEB" ] && plugins="[ \"$ORTHANC_DICOMWEB\" ]"
    cat >"$dir/config.json" <<EOF
{
  "Name": "pacsgrid-bench",
  "StorageDirectory": "$dir/storage",
  "IndexDirectory": "$dir/index",
  "StorageCompression": false,
  "Plugins": $plugins,
  "HttpServerEnabled": true,
  "HttpPort": $hport,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomServerEnabled": true,
  "DicomAet": "ORTHANC",
  "MaximumPduLength": $PDU,
  "DicomPort": $dport,
  "DicomCheckCalledAet": false,
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": true,
  "DicomAlwaysAllowFind": true,
  "DicomAlwaysAllowGet": true,
  "DicomCheckModalityHost": false,
  "DicomModalities": { "bench": [ "$CALLING_AE", "127.0.0.1", 4243 ] },
  "SaveJobs": false
}
EOF
    local cmd=("$ORTHANC_BIN" "$dir/config.json")
    R[orthanc.cmd_serve]="TCP_NODELAY=1 $(qcmd "${cmd[@]}")"
    log "orthanc: starting (DICOM $dport, HTTP $hport)"
    "${cmd[@]}" >"$LOGS/orthanc.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http "http://$HOST:$hport/system" "$pid" orthanc
    wait_dicom ORTHANC "$dport" "$pid" orthanc
    R[orthanc.version]=$(curl -fsS "http://$HOST:$hport/system" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Version"])' || echo "?")
    ingest orthanc ORTHANC "$dport" "$pid"
    R[orthanc.files]=$(curl -fsS "http://$HOST:$hport/statistics" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])' || echo "?")
    query orthanc ORTHANC "$dport"
    if [ -n "$ORTHANC_DICOMWEB" ]; then dicomweb orthanc "http://$HOST:$hport/dicom-web"
    else log "orthanc: DICOMweb plugin not found, no WADO/QIDO figures"; fi
    finish_server orthanc "$pid"
    cp "$dir/config.json" "$LOGS/orthanc.config.json"
    [ "$KEEP" = 1 ] || rm -rf "$dir"
}

# run_pacsgrid_as NAME [serve args...]: one pacsgrid node through the whole benchmark.
run_pacsgrid_as() {
    local name="$1" dport hport dir pid
    shift
    [ -x "$PACSGRID" ] || die "$PACSGRID not built"
    dport=$(free_port); hport=$(free_port)
    dir="$WORK/$name-data"
    local cmd=("$PACSGRID" serve --data "$dir" --dicom-port "$dport" --http-port "$hport" "$@")
    R[$name.cmd_serve]="TCP_NODELAY=1 $(qcmd "${cmd[@]}")"
    log "$name: starting (DICOM $dport, HTTP $hport)"
    NO_COLOR=1 "${cmd[@]}" >"$LOGS/$name.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http "http://$HOST:$hport/healthz" "$pid" "$name"
    wait_dicom PACSGRID "$dport" "$pid" "$name"
    R[$name.version]=$("$PACSGRID" --version 2>/dev/null | awk '{ print $2 }' || echo "?")
    ingest "$name" PACSGRID "$dport" "$pid"
    R[$name.files]=$(find "$dir" -type f -path '*blobs*' | wc -l)
    query "$name" PACSGRID "$dport"
    dicomweb "$name" "http://$HOST:$hport/dicom-web"
    curl -fsS "http://$HOST:$hport/metrics" >"$LOGS/$name.metrics.txt" 2>/dev/null || true
    finish_server "$name" "$pid"
    R[$name.data_bytes]=$(du -sb "$dir" 2>/dev/null | cut -f1 || echo "?")
    [ "$KEEP" = 1 ] || rm -rf "$dir"
}

run_pacsgrid() { run_pacsgrid_as pacsgrid; }

# The index in a PostgreSQL server of its own on loopback (fsync on, default settings), made by
# the project's test script and removed afterwards.
run_pacsgrid_pg() {
    local env
    env="$("$REPO/scripts/pg-test-server.sh" start 2>>"$LOGS/postgres.log")" \
        || die "could not start PostgreSQL (log: $LOGS/postgres.log)"
    eval "$env"
    PG_DIR="$PACSGRID_PG_TEST_DIR"
    R[pacsgrid-pg.postgres]=$("$("$REPO/scripts/pg-test-server.sh" bindir)/postgres" --version | awk '{ print $3 }')
    printf '[storage]\nindex = "postgres"\n\n[storage.postgres]\nurl = "%s"\nschema = "bench"\n' \
        "$PACSGRID_PG_TEST_URL" >"$WORK/pacsgrid-pg.toml"
    cp "$WORK/pacsgrid-pg.toml" "$LOGS/pacsgrid-pg.toml"
    run_pacsgrid_as pacsgrid-pg --config "$WORK/pacsgrid-pg.toml"
    "$REPO/scripts/pg-test-server.sh" stop "$PG_DIR" 2>>"$LOGS/postgres.log" || true
    PG_DIR=""
}

# ---------------------------------------------------------------------------------------------
# 5. Report
# ---------------------------------------------------------------------------------------------
v() { echo "${R[$1]:-n/a}"; }
report() {
    local f="$OUT/results.md" t
    {
        echo "# pacsgrid ingest benchmark"
        echo
        echo "- date: $RUN_DATE"
        echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
        echo "- load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- corpus: $INSTANCES CT instances, $CORPUS_MB MB ($CORPUS_BYTES bytes), explicit VR little endian, 512x512x16 bit;" \
             "$N_STUDIES studies ($C_PATIENTS patients x $C_STUDIES studies x $C_SERIES series x $C_PER_SERIES images), $CORPUS"
        echo "- pacsgrid: $(v pacsgrid.version) (git $GIT_REV); Orthanc $(v orthanc.version); dcmtk $DCMTK_VERSION"
        echo "- every dcmtk process and Orthanc ran with TCP_NODELAY=1; servers ran one at a time; corpus in page cache"
        echo
        echo "## Results"
        echo
        echo "| target | ingest s | inst/s | MB/s | stored OK | idle RSS MB | peak RSS MB (ingest) | C-FIND ms (new assoc.) | C-FIND ms (same assoc.) | C-GET study s (mean / best) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for t in storescp orthanc pacsgrid pacsgrid-pg; do
            want "$t" || continue
            local find="n/a" finda="n/a" get="n/a"
            if [ "$t" != storescp ]; then
                find=$(v $t.find_ms); finda=$(v $t.find_assoc_ms); get="$(v $t.get_s) / $(v $t.get_best_s)"
            fi
            echo "| $t | $(v $t.ingest_s) | $(v $t.ingest_ips) | $(v $t.ingest_mbps) | $(v $t.stored_ok)/$INSTANCES | $(kb_to_mb "$(v $t.rss_idle)") | $(v $t.rss_peak) | $find | $finda | $get |"
        done
        echo
        echo "DICOMweb (curl; WADO-RS: the query study, $Q_STUDY_INSTANCES instances, $(fdiv "$Q_STUDY_BYTES" 1000000 1) MB, \`transfer-syntax=*\`, x$WEB_REPEATS;" \
             "QIDO-RS: \`/studies?PatientID=$Q_PATIENT\` x$FIND_REPEATS on one keep-alive connection):"
        echo
        echo "| target | WADO-RS study s (mean / best) | WADO-RS MB/s | parts | QIDO-RS ms/query | studies found |"
        echo "|---|---:|---:|---:|---:|---:|"
        for t in orthanc pacsgrid pacsgrid-pg; do
            want "$t" || continue
            echo "| $t | $(v $t.wado_s) / $(v $t.wado_best_s) | $(v $t.wado_mbps) | $(v $t.wado_parts)/$Q_STUDY_INSTANCES | $(v $t.qido_ms) | $(v $t.qido_matches)/$Q_PATIENT_STUDIES |"
        done
        echo
        echo "## Ratios"
        echo
        echo "| ratio | value | reading |"
        echo "|---|---:|---|"
        echo "| pacsgrid ingest time / storescp sink time | $(fdiv "$(v pacsgrid.ingest_s)" "$(v storescp.ingest_s)") | 1.0 = as fast as a raw sink; lower is better |"
        echo "| pacsgrid ingest throughput / Orthanc's | $(fdiv "$(v pacsgrid.ingest_ips)" "$(v orthanc.ingest_ips)") | > 1: pacsgrid faster |"
        echo "| C-FIND, new association: Orthanc time / pacsgrid time | $(fdiv "$(v orthanc.find_ms)" "$(v pacsgrid.find_ms)") | > 1: pacsgrid faster |"
        echo "| C-FIND, same association: Orthanc time / pacsgrid time | $(fdiv "$(v orthanc.find_assoc_ms)" "$(v pacsgrid.find_assoc_ms)") | > 1: pacsgrid faster |"
        echo "| C-GET study: Orthanc time / pacsgrid time | $(fdiv "$(v orthanc.get_s)" "$(v pacsgrid.get_s)") | > 1: pacsgrid faster |"
        echo "| WADO-RS study throughput: pacsgrid / Orthanc | $(fdiv "$(v orthanc.wado_s)" "$(v pacsgrid.wado_s)") | target >= 2 |"
        echo "| QIDO-RS study search: Orthanc time / pacsgrid time | $(fdiv "$(v orthanc.qido_ms)" "$(v pacsgrid.qido_ms)") | target >= 1 |"
        echo "| peak RSS: pacsgrid / Orthanc | $(fdiv "$(v pacsgrid.rss_peak_kb)" "$(v orthanc.rss_peak_kb)") | < 1: pacsgrid smaller |"
        if want pacsgrid-pg; then
            echo "| ingest time: index in PostgreSQL / in SQLite | $(fdiv "$(v pacsgrid-pg.ingest_s)" "$(v pacsgrid.ingest_s)") | > 1: PostgreSQL slower (PostgreSQL $(v pacsgrid-pg.postgres), local, fsync on) |"
            echo "| C-FIND, same association: PostgreSQL / SQLite | $(fdiv "$(v pacsgrid-pg.find_assoc_ms)" "$(v pacsgrid.find_assoc_ms)") | > 1: PostgreSQL slower |"
            echo "| QIDO-RS study search: PostgreSQL / SQLite | $(fdiv "$(v pacsgrid-pg.qido_ms)" "$(v pacsgrid.qido_ms)") | > 1: PostgreSQL slower |"
            echo "| C-GET study: PostgreSQL / SQLite | $(fdiv "$(v pacsgrid-pg.get_s)" "$(v pacsgrid.get_s)") | > 1: PostgreSQL slower |"
        fi
        echo
        echo "## Checks"
        echo
        for t in storescp orthanc pacsgrid pacsgrid-pg; do
            want "$t" || continue
            echo "- $t: $(v $t.stored_ok)/$INSTANCES C-STORE successes; objects on the server: $(v $t.files)"
            [ "$t" = storescp ] && continue
            echo "  - C-FIND all studies: $(v $t.studies_found)/$N_STUDIES; C-FIND PatientID=$Q_PATIENT: $(v $t.find_matches)/$Q_PATIENT_STUDIES studies;" \
                 "C-GET: $(v $t.get_received)/$Q_STUDY_INSTANCES files"
            if [ "$t" = pacsgrid ] || [ "$t" = pacsgrid-pg ]; then
                echo "  - log: $(v $t.warnings) WARN/ERROR lines (first 50 in bench/out/logs/$t.warnings.log)"
                if [ -n "${R[$t.store_ms]:-}" ]; then echo "  - server-side C-STORE time from its log: ${R[$t.store_ms]}"; fi
                if [ -n "${R[$t.commit_ms]:-}" ]; then echo "  - of which commit (from its log): ${R[$t.commit_ms]}"; fi
            fi
        done
        echo
        echo "## Commands"
        echo
        echo '```'
        qcmd "$PY" "$GEN" "${GEN_ARGS[@]}"
        for t in storescp orthanc pacsgrid pacsgrid-pg; do
            want "$t" || continue
            echo "# $t"
            echo "$(v $t.cmd_serve) &"
            echo "$(v $t.cmd_store)"
            [ "$t" = storescp ] && continue
            echo "$(v $t.cmd_find)      # x$FIND_REPEATS, one process each"
            echo "${R[$t.cmd_find]/findscu -S -pdu $PDU/findscu -S -pdu $PDU --repeat $FIND_REPEATS}      # once"
            echo "$(v $t.cmd_get)      # x$GET_REPEATS"
            echo "$(v $t.cmd_wado)      # x$WEB_REPEATS"
            echo "$(v $t.cmd_qido)      # x$FIND_REPEATS, one connection"
        done
        echo '```'
        echo
        echo "Benchmark run took $(fsub "$(now)" "$RUN_T0") s (excluding the pacsgrid build, ${BUILD_S:-0} s)."
    } >"$f"
    echo
    cat "$f"
    log "written $f; server logs in $LOGS"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.txt "$LOGS"/*.json
[ -f "$GEN" ] || die "gen_dataset.py not found at $REPO/../shared/data/gen_dataset.py"
install_deps
RUN_DATE="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || GIT_REV="$GIT_REV+dirty"
DCMTK_VERSION="$(dpkg-query -W -f='${Version}' dcmtk 2>/dev/null || echo '?')"

if { want pacsgrid || want pacsgrid-pg; } && [ "$BUILD" = 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup), or use --targets storescp,orthanc"
    log "building pacsgrid (cargo build --release -p pacsgrid)"
    t0=$(now)
    (cd "$REPO" && cargo build --release -p pacsgrid) >"$LOGS/cargo-build.log" 2>&1 \
        || { tail -30 "$LOGS/cargo-build.log" >&2; die "cargo build failed (log: $LOGS/cargo-build.log)"; }
    BUILD_S=$(fsub "$(now)" "$t0")
    log "built in $BUILD_S s"
fi

RUN_T0=$(now)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pacsgrid-bench.XXXXXX")"
make_corpus
log "corpus: $INSTANCES instances, $CORPUS_MB MB; query patient $Q_PATIENT, study $Q_STUDY"
want storescp && run_storescp
want orthanc && run_orthanc
want pacsgrid && run_pacsgrid
want pacsgrid-pg && run_pacsgrid_pg
# Server-side time per C-STORE, if pacsgrid logs it: "C-STORE ... stored ... ms=N [commit_ms=M]".
log_stats() {  # log_stats NAME FIELD: distribution of FIELD=N over NAME's stored C-STOREs
    grep -E 'C-STORE.*stored' "$LOGS/$1.log" | grep -oE " $2=[0-9]+" | sed 's/.*=//' | sort -n | awk -v f="$2" '
        { a[NR] = $1; s += $1 }
        END { if (NR == 0) exit
              p50 = a[int((NR + 1) * 0.50)]; p99 = a[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1]
              printf "%s over %d C-STOREs: mean %.1f ms, p50 %d, p99 %d, max %d", f, NR, s / NR, p50, p99, a[NR] }' || true
}
for t in pacsgrid pacsgrid-pg; do
    want "$t" && [ -s "$LOGS/$t.log" ] || continue
    grep -E ' (WARN|ERROR) ' "$LOGS/$t.log" | head -50 >"$LOGS/$t.warnings.log" || true
    if [ -s "$LOGS/$t.warnings.log" ]; then
        log "$t logged $(grep -cE ' (WARN|ERROR) ' "$LOGS/$t.log") warnings/errors: $LOGS/$t.warnings.log"
    fi
    R[$t.store_ms]=$(log_stats "$t" ms)
    R[$t.commit_ms]=$(log_stats "$t" commit_ms)
    R[$t.warnings]=$(grep -cE ' (WARN|ERROR) ' "$LOGS/$t.log" || true)
done
report
