#!/usr/bin/env bash
# pacsgrid security benchmark (issue 5, "Speed"): what DICOM TLS and the audit trail cost.
# On one CT corpus, in the same run: storescu ingest over plain TCP against storescu +tls (mutual
# TLS, client certificate required), and ingest plus a C-FIND loop with [audit] enabled = false
# against enabled = true. Each configuration gets a fresh node and data directory; the rounds
# alternate the configurations and the medians are compared.
#
#   bench/security.sh [--instances N] [--rounds N] [--find-repeats N] [--keep] [--no-build] [--no-install]
#
# See bench/README.md ("Security"). Results: printed and written to bench/out/security/results.{md,json}.
set -Eeuo pipefail

INSTANCES=500
ROUNDS=3
FIND_REPEATS=200
FIND_PROCS=30
KEEP=0
BUILD=1
INSTALL=1

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --instances) INSTANCES="$2"; shift 2 ;;
        --instances=*) INSTANCES="${1#*=}"; shift ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --find-repeats) FIND_REPEATS="$2"; shift 2 ;;
        --find-repeats=*) FIND_REPEATS="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "security.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in "$INSTANCES" "$ROUNDS" "$FIND_REPEATS"; do
    case "$v" in ''|*[!0-9]*|0) echo "security.sh: counts must be positive integers" >&2; exit 2 ;; esac
done

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
GEN="${PACSGRID_SHARED:-$REPO/../shared}/data/gen_dataset.py"
OUT="$BENCH_DIR/out"            # corpus cache and venv, shared with ingest.sh
SOUT="$OUT/security"
LOGS="$SOUT/logs"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
PACSGRID="${PACSGRID_BIN:-$PACSGRID}"
OPENSSL=/usr/bin/openssl

install_deps() {
    local missing=() p
    for p in dcmtk openssl; do
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
    for p in "$STORESCU" "$FINDSCU" "$ECHOSCU" "$OPENSSL"; do
        [ -x "$p" ] || die "$p not found"
    done
    setup_python
    command -v curl >/dev/null 2>&1 || die "curl missing"
}

# make_pki DIR: a CA, the node's certificate (localhost, 127.0.0.1) and a client certificate,
# P-256 keys, as the tests make them.
make_pki() {
    local d="$1"
    mkdir -p "$d"
    (
        cd "$d"
        "$OPENSSL" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
            -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign
        leaf() {  # leaf NAME CN EXT
            printf '%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n' "$3" >"$1.ext"
            "$OPENSSL" req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
            "$OPENSSL" x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext"
        }
        leaf node localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'
        leaf client BENCHSCU 'extendedKeyUsage=clientAuth'
    ) >"$LOGS/openssl.log" 2>&1 || { cat "$LOGS/openssl.log" >&2; die "openssl failed"; }
}

declare -A M  # M[config.metric]: space-separated values, one per round

# start_node NAME AUDIT(true|false): a fresh node with a plain and a TLS port; sets NODE_PID,
# DPORT, TPORT, HPORT.
start_node() {
    local name="$1" audit="$2" dir="$WORK/$1"
    rm -rf "$dir"; mkdir -p "$dir"
    DPORT=$(free_port); TPORT=$(free_port); HPORT=$(free_port)
    cat >"$dir/pacsgrid.toml" <<EOF
[node]
data_dir = "$dir/data"

[dicom]
port = $DPORT
bind = "127.0.0.1"
plain = true

[dicom.tls]
port = $TPORT
cert = "$PKI/node.pem"
key = "$PKI/node.key"
client_ca = "$PKI/ca.pem"

[http]
port = $HPORT
bind = "127.0.0.1"

[audit]
enabled = $audit
EOF
    cp "$dir/pacsgrid.toml" "$LOGS/$name.toml"
    NO_COLOR=1 RUST_LOG="info,pacsgrid_dimse::server=debug" "$PACSGRID" serve --config "$dir/pacsgrid.toml" \
        >"$LOGS/$name.log" 2>&1 &
    NODE_PID=$!; PIDS+=("$NODE_PID")
    wait_http "http://$HOST:$HPORT/healthz" "$NODE_PID" "$name"
    wait_dicom PACSGRID "$DPORT" "$NODE_PID" "$name"
}

stop_node() {  # stop_node NAME
    stop_pid "$NODE_PID"
    [ "$KEEP" = 1 ] || rm -rf "${WORK:?}/$1"
}

# cpu_s PID: user + system CPU seconds the process has used so far. Much steadier than wall
# time on a shared machine: other processes slow the node down but do not add to its CPU time.
CLK_TCK=$(getconf CLK_TCK)
cpu_s() { awk -v hz="$CLK_TCK" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# record CONFIG METRIC VALUE
record() { M[$1.$2]="${M[$1.$2]:-} $3"; }

# find_loop NAME PORT: C-FIND (Study Root, STUDY level, PatientID of the first patient) x
# FIND_REPEATS in one association, then FIND_PROCS findscu processes; ms per query each.
find_loop() {
    local name="$1" port="$2" t0 t1 i n
    local keys=(-k QueryRetrieveLevel=STUDY -k StudyInstanceUID -k "PatientID=$Q_PATIENT")
    n=$("$FINDSCU" -v -S -aet "$CALLING_AE" -aec PACSGRID "${keys[@]}" "$HOST" "$port" 2>&1 | grep -c 'Find Response.*(Pending)' || true)
    [ "$n" = "$Q_PATIENT_STUDIES" ] || log "WARNING: $name: C-FIND found $n studies, expected $Q_PATIENT_STUDIES"
    FIND_CMD="TCP_NODELAY=1 $(qcmd "$FINDSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec PACSGRID --repeat "$FIND_REPEATS" "${keys[@]}" "$HOST" "$port")"
    t0=$(now)
    "$FINDSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec PACSGRID --repeat "$FIND_REPEATS" "${keys[@]}" "$HOST" "$port" \
        >>"$LOGS/$name.find.log" 2>&1 || log "WARNING: $name: findscu --repeat exited with status $?"
    t1=$(now)
    FIND_ASSOC_MS=$(fmul "$(fdiv "$(fsub "$t1" "$t0")" "$FIND_REPEATS" 6)" 1000 3)
    t0=$(now)
    for i in $(seq 1 "$FIND_PROCS"); do
        "$FINDSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec PACSGRID "${keys[@]}" "$HOST" "$port" \
            >>"$LOGS/$name.find.log" 2>&1 || log "WARNING: $name: findscu exited with status $?"
    done
    t1=$(now)
    FIND_PROC_MS=$(fmul "$(fdiv "$(fsub "$t1" "$t0")" "$FIND_PROCS" 6)" 1000 3)
}

# run_config CONFIG ROUND: one fresh node, one measurement.
#   plain:     audit off, storescu over the plain port, then the C-FIND loop
#   tls:       audit off, storescu +tls (client certificate) over the TLS port
#   audit:     audit on, storescu over the plain port, then the C-FIND loop
run_config() {
    local cfg="$1" round="$2" name="$1-r$2" audit=false
    [ "$cfg" = audit ] && audit=true
    start_node "$name" "$audit"
    local c0 c1
    c0=$(cpu_s "$NODE_PID")
    if [ "$cfg" = tls ]; then
        ingest "$name" PACSGRID "$TPORT" "$NODE_PID" +tls "$PKI/client.key" "$PKI/client.pem" +cf "$PKI/ca.pem"
        TLS_CMD="${R[$name.cmd_store]}"
        TLS_PARAMS=$(grep -m1 -oE 'tls="?TLS[^"]*' "$LOGS/$name.log" | sed 's/^tls="\{0,1\}//' || true)
    else
        ingest "$name" PACSGRID "$DPORT" "$NODE_PID"
        PLAIN_CMD="${R[$name.cmd_store]}"
        c1=$(cpu_s "$NODE_PID")
        find_loop "$name" "$DPORT"
        record "$cfg" find_cpu_s "$(fsub "$(cpu_s "$NODE_PID")" "$c1")"
        record "$cfg" find_assoc_ms "$FIND_ASSOC_MS"
        record "$cfg" find_proc_ms "$FIND_PROC_MS"
    fi
    [ "${R[$name.stored_ok]}" = "$INSTANCES" ] || FAILURES+=("$name: ${R[$name.stored_ok]}/$INSTANCES stored")
    record "$cfg" ingest_s "${R[$name.ingest_s]}"
    record "$cfg" ingest_cpu_s "$(fsub "${c1:-$(cpu_s "$NODE_PID")}" "$c0")"
    record "$cfg" rss_peak_mb "${R[$name.rss_peak]}"
    if [ "$cfg" = audit ]; then
        AUDIT_RECORDS=$( { cat "$WORK/$name/data/audit/"*.log 2>/dev/null || true; } | wc -l)
    fi
    stop_node "$name"
}

# shellcheck disable=SC2086  # M holds space-separated numbers
med() { median ${M[$1]:-}; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { if (r == "n/a") print "n/a"; else print (r <= t ? "yes" : "**no**") }'; }

report() {
    local md="$SOUT/results.md" json="$SOUT/results.json"
    local pi ti ai pfa afa pfp afp r_tls r_ai r_fa r_fp pc tc ac pfc afc r_tlsc r_aic r_fc
    pi=$(med plain.ingest_s); ti=$(med tls.ingest_s); ai=$(med audit.ingest_s)
    pfa=$(med plain.find_assoc_ms); afa=$(med audit.find_assoc_ms)
    pfp=$(med plain.find_proc_ms); afp=$(med audit.find_proc_ms)
    r_tls=$(fdiv "$ti" "$pi" 3); r_ai=$(fdiv "$ai" "$pi" 3)
    r_fa=$(fdiv "$afa" "$pfa" 3); r_fp=$(fdiv "$afp" "$pfp" 3)
    pc=$(med plain.ingest_cpu_s); tc=$(med tls.ingest_cpu_s); ac=$(med audit.ingest_cpu_s)
    pfc=$(med plain.find_cpu_s); afc=$(med audit.find_cpu_s)
    r_tlsc=$(fdiv "$tc" "$pc" 3); r_aic=$(fdiv "$ac" "$pc" 3); r_fc=$(fdiv "$afc" "$pfc" 3)
    {
        echo "# pacsgrid security benchmark"
        echo
        echo "- date: $RUN_DATE; git $GIT_REV; dcmtk $DCMTK_VERSION"
        echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- corpus: $INSTANCES CT instances, $CORPUS_MB MB, explicit VR little endian ($CORPUS)"
        echo "- $ROUNDS rounds, each: plain, tls, audit (fresh node and data directory each); medians below, every round in results.json"
        echo "- TLS: mutual (client certificate required, P-256 ECDSA certificates); negotiated: ${TLS_PARAMS:-unknown}"
        echo
        echo "| measurement | plain, audit off | TLS, audit off | plain, audit on |"
        echo "|---|---:|---:|---:|"
        echo "| ingest s (storescu, one association) | $pi | $ti | $ai |"
        echo "| ingest MB/s | $(fdiv "$CORPUS_MB" "$pi" 1) | $(fdiv "$CORPUS_MB" "$ti" 1) | $(fdiv "$CORPUS_MB" "$ai" 1) |"
        echo "| node CPU s during ingest (user + system) | $pc | $tc | $ac |"
        echo "| peak RSS MB during ingest | $(med plain.rss_peak_mb) | $(med tls.rss_peak_mb) | $(med audit.rss_peak_mb) |"
        echo "| C-FIND ms/query, one association (x$FIND_REPEATS) | $pfa | | $afa |"
        echo "| C-FIND ms/query, one findscu process each (x$FIND_PROCS) | $pfp | | $afp |"
        echo "| node CPU s during both C-FIND loops | $pfc | | $afc |"
        echo
        echo "| ratio | value | target | met |"
        echo "|---|---:|---:|:---:|"
        echo "| TLS ingest time / plain | $r_tls | <= 1.25 | $(verdict "$r_tls" 1.25) |"
        echo "| audit on / off: ingest time | $r_ai | <= 1.10 | $(verdict "$r_ai" 1.10) |"
        echo "| audit on / off: C-FIND, one association | $r_fa | <= 1.10 | $(verdict "$r_fa" 1.10) |"
        echo "| audit on / off: C-FIND, new association each | $r_fp | <= 1.10 | $(verdict "$r_fp" 1.10) |"
        echo "| node CPU during ingest: TLS / plain | $r_tlsc | (<= 1.25) | |"
        echo "| node CPU during ingest: audit on / off | $r_aic | (<= 1.10) | |"
        echo "| node CPU during C-FIND: audit on / off | $r_fc | (<= 1.10) | |"
        echo
        echo "Audit log lines after the last audited round: ${AUDIT_RECORDS:-0} (0 means this build does not write an audit trail yet)."
        if [ ${#FAILURES[@]} -gt 0 ]; then
            echo
            echo "**Failures:** ${FAILURES[*]}"
        fi
        echo
        echo '```'
        echo "$PLAIN_CMD"
        echo "$TLS_CMD"
        echo "$FIND_CMD      # and x$FIND_PROCS without --repeat"
        echo '```'
        echo
        echo "Run took $(fsub "$(now)" "$RUN_T0") s."
    } >"$md"
    "$PY" - "$json" <<EOF
import json, sys
def vals(s): return [float(x) for x in s.split()]
out = {
    "date": "$RUN_DATE", "git": "$GIT_REV", "instances": $INSTANCES, "corpus_mb": float("$CORPUS_MB"),
    "rounds": $ROUNDS, "find_repeats": $FIND_REPEATS, "find_procs": $FIND_PROCS,
    "tls_parameters": "${TLS_PARAMS:-}", "load_start": "$LOAD_START",
    "runs": {
        "plain": {"ingest_s": vals("${M[plain.ingest_s]:-}"), "find_assoc_ms": vals("${M[plain.find_assoc_ms]:-}"),
                  "find_proc_ms": vals("${M[plain.find_proc_ms]:-}"),
                  "ingest_cpu_s": vals("${M[plain.ingest_cpu_s]:-}"), "find_cpu_s": vals("${M[plain.find_cpu_s]:-}")},
        "tls": {"ingest_s": vals("${M[tls.ingest_s]:-}"), "ingest_cpu_s": vals("${M[tls.ingest_cpu_s]:-}")},
        "audit": {"ingest_s": vals("${M[audit.ingest_s]:-}"), "find_assoc_ms": vals("${M[audit.find_assoc_ms]:-}"),
                  "find_proc_ms": vals("${M[audit.find_proc_ms]:-}"),
                  "ingest_cpu_s": vals("${M[audit.ingest_cpu_s]:-}"), "find_cpu_s": vals("${M[audit.find_cpu_s]:-}")},
    },
    "ratios": {"tls_ingest": "$r_tls", "audit_ingest": "$r_ai", "audit_find_assoc": "$r_fa",
               "audit_find_proc": "$r_fp", "tls_ingest_cpu": "$r_tlsc", "audit_ingest_cpu": "$r_aic",
               "audit_find_cpu": "$r_fc"},
    "targets": {"tls_ingest": 1.25, "audit": 1.10},
    "audit_log_lines": int("${AUDIT_RECORDS:-0}" or 0),
    "failures": [f for f in """${FAILURES[*]:-}""".split("  ") if f],
}
json.dump(out, open(sys.argv[1], "w"), indent=2)
EOF
    echo
    cat "$md"
    log "written $md and $json; logs in $LOGS"
}

mkdir -p "$SOUT" "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.toml
[ -f "$GEN" ] || die "gen_dataset.py not found at $GEN (set PACSGRID_SHARED)"
install_deps
RUN_DATE="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || GIT_REV="$GIT_REV+dirty"
DCMTK_VERSION="$(dpkg-query -W -f='${Version}' dcmtk 2>/dev/null || echo '?')"
if [ "$BUILD" = 1 ] && [ -z "${PACSGRID_BIN:-}" ]; then
    log "building pacsgrid (cargo build --release -p pacsgrid)"
    (cd "$REPO" && cargo build --release -p pacsgrid) >"$LOGS/cargo-build.log" 2>&1 \
        || { tail -30 "$LOGS/cargo-build.log" >&2; die "cargo build failed (log: $LOGS/cargo-build.log)"; }
fi
[ -x "$PACSGRID" ] || die "$PACSGRID not built"

RUN_T0=$(now)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pacsgrid-security.XXXXXX")"
FAILURES=()
make_corpus
PKI="$WORK/pki"
make_pki "$PKI"
log "corpus: $INSTANCES instances, $CORPUS_MB MB; $ROUNDS rounds of plain / tls / audit"
for round in $(seq 1 "$ROUNDS"); do
    # alternate the order so that drift in the machine's load does not favour one configuration
    if [ $((round % 2)) = 1 ]; then order="plain tls audit"; else order="audit tls plain"; fi
    for cfg in $order; do run_config "$cfg" "$round"; done
done
report
