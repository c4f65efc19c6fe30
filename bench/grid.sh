#!/usr/bin/env bash
# pacsgrid grid benchmark (issue 4, "Speed"): on loopback grids made by `pacsgrid grid init`,
# measures how fast an instance stored at A becomes visible to C-FIND at B, how long the grid
# takes to reach K copies of a ~1 GB corpus compared with a plain copy of the same bytes, and
# on-the-fly C-GET at B of a study held only at A compared with a local C-GET at A.
#
#   bench/grid.sh [--instances N] [--vis-count N] [--get-repeats N] [--backlog-only] [--get-only]
#                 [--perf] [--keep] [--no-build] [--no-install]
#
# See bench/README.md ("Grid") for what it measures and how to read the results.
# Results: printed at the end and written to bench/out/grid/results.{md,json} (logs beside them).
set -Eeuo pipefail

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
INSTANCES=2000
VIS_COUNT=200
GET_REPEATS=5
KEEP=0
BUILD=1
INSTALL=1
BACKLOG_ONLY=0
GET_ONLY=0
PERF=0

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --instances) INSTANCES="$2"; shift 2 ;;
        --instances=*) INSTANCES="${1#*=}"; shift ;;
        --vis-count) VIS_COUNT="$2"; shift 2 ;;
        --vis-count=*) VIS_COUNT="${1#*=}"; shift ;;
        --get-repeats) GET_REPEATS="$2"; shift 2 ;;
        --get-repeats=*) GET_REPEATS="${1#*=}"; shift ;;
        --backlog-only) BACKLOG_ONLY=1; shift ;;
        --get-only) GET_ONLY=1; shift ;;
        --perf) PERF=1; shift ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "grid.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in "$INSTANCES" "$VIS_COUNT" "$GET_REPEATS"; do
    case "$v" in ''|*[!0-9]*|0) echo "grid.sh: counts must be positive integers" >&2; exit 2 ;; esac
done
# The retrieve grid uses the corpus's first patient: it needs the 2 x 2 x 50 shape (see corpus_shape).
[ $((INSTANCES % 200)) = 0 ] || { echo "grid.sh: --instances must be a multiple of 200" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Paths; the tools and shared helpers come from lib.sh.
# ---------------------------------------------------------------------------------------------
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
# The corpus generator: <repo>/../shared/data/gen_dataset.py, or under $PACSGRID_SHARED/data
# (the variable the end-to-end tests use) when the repository is checked out elsewhere.
GEN="${PACSGRID_SHARED:-$REPO/../shared}/data/gen_dataset.py"
HELPER="$BENCH_DIR/grid_bench.py"
OUT="$BENCH_DIR/out"
GOUT="$OUT/grid"
LOGS="$GOUT/logs"
# Tools, arithmetic, process bookkeeping (everything started is stopped by PID on exit) and
# wait_http are in lib.sh, shared with ingest.sh and security.sh.
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
PACSGRID="${PACSGRID_BIN:-$PACSGRID}"

now_ms() { date +%s%3N; }
# discard DIR: moves DIR aside, to be removed with $WORK when the run ends. Deleting thousands
# of files just before a timed step slows that step's file creation: ext4 without a journal
# (as on this machine) skips inodes freed in the last 30 s when it allocates new ones, so the
# step after a large `rm -rf` pays for a scan the other side of the comparison did not.
discard() {
    mkdir -p "$WORK/discarded"
    mv "$1" "$WORK/discarded/$(basename "$1").$RANDOM$RANDOM" 2>/dev/null || rm -rf "$1"
}
jget() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || echo "n/a"; }
# blob_bytes DIR: bytes in the blob files of a data directory (directories not counted).
blob_bytes() { find "$1/blobs" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
blob_files() { find "$1/blobs" -type f 2>/dev/null | wc -l; }
# cpu_s PID: CPU seconds (user + system, all threads, exited ones too) the process used so far.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------------------------------------
# 0. Dependencies
# ---------------------------------------------------------------------------------------------
install_deps() {
    if ! dpkg-query -W -f='${Status}' dcmtk 2>/dev/null | grep -q "install ok installed"; then
        [ "$INSTALL" = 1 ] || die "missing Debian package dcmtk (run without --no-install)"
        log "apt-get install dcmtk"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dcmtk >/dev/null
    fi
    for p in "$STORESCU" "$GETSCU"; do [ -x "$p" ] || die "$p not found (Debian package dcmtk)"; done

    # Python: gen_dataset.py's modules plus pynetdicom (C-STORE and C-FIND on open associations).
    local mods="import pydicom, numpy, pylibjpeg, rle, openjpeg, jpeg_ls, pynetdicom"
    local pkgs="pydicom numpy pylibjpeg pylibjpeg-rle pylibjpeg-openjpeg pyjpegls pynetdicom"
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
            [ -x "$OUT/venv/bin/pip" ] || python3 -m venv "$OUT/venv"
            log "pip install $pkgs (venv $OUT/venv)"
            # shellcheck disable=SC2086
            "$OUT/venv/bin/pip" install -q $pkgs
            "$PY" -c "$mods" || die "python deps still missing after pip install"
        fi
    fi
    command -v curl >/dev/null 2>&1 || {
        [ "$INSTALL" = 1 ] || die "curl missing"
        apt-get install -y -qq curl >/dev/null
    }
}

# ---------------------------------------------------------------------------------------------
# 1. Corpora (cached under bench/out, shared with ingest.sh: same directory, same stamp)
# ---------------------------------------------------------------------------------------------
# gen_corpus DIR ARGS...: generate unless DIR holds a corpus made with the same ARGS and generator.
gen_corpus() {
    local dir="$1"; shift
    local args=(--out "$dir" "$@") stamp t0
    stamp="$(sha256sum "$GEN" | cut -c1-16) ${args[*]:2}"
    if [ -f "$dir/.bench-stamp" ] && [ "$(cat "$dir/.bench-stamp")" = "$stamp" ] && [ -f "$dir/manifest.json" ]; then
        log "corpus: cached $dir"
        return 0
    fi
    log "corpus: generating $dir"
    t0=$(now)
    "$PY" "$GEN" "${args[@]}" --force >"$LOGS/gen_dataset.$(basename "$dir").log" 2>&1 \
        || { tail -20 "$LOGS/gen_dataset.$(basename "$dir").log" >&2; die "gen_dataset.py failed"; }
    echo "$stamp" >"$dir/.bench-stamp"
    log "corpus: generated in $(fsub "$(now)" "$t0") s"
}
corpus_bytes() { find "$1" -name '*.dcm' -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

make_corpora() {
    # The replication corpus: ingest.sh's CT corpus (studies of 2 series x 50 512x512 CT images).
    CORPUS="$OUT/corpus-ct$INSTANCES"
    CORPUS_ARGS=(--patients "$((INSTANCES / 200))" --studies 2 --series 2 --instances 50 --modality-mix CT=1 --ts-mix explicit=1)
    gen_corpus "$CORPUS" "${CORPUS_ARGS[@]}"
    CORPUS_FILES=$(find "$CORPUS" -name '*.dcm' -type f | wc -l)
    [ "$CORPUS_FILES" = "$INSTANCES" ] || die "corpus has $CORPUS_FILES files, expected $INSTANCES (delete $CORPUS)"
    CORPUS_BYTES=$(corpus_bytes "$CORPUS")
    # The retrieve corpus: the first patient of the CT corpus (2 studies x 100 instances).
    RPATIENT_DIR="$(find "$CORPUS" -mindepth 1 -maxdepth 1 -type d | sort | head -1)"
    RCOUNT=$(find "$RPATIENT_DIR" -name '*.dcm' -type f | wc -l)
    # The visibility corpus: small MR instances (256x256, ~130 KB) of their own patient and UIDs
    # (another seed and patient prefix, so nothing collides with the CT corpus).
    VCORPUS="$OUT/corpus-vis-mr$VIS_COUNT"
    VCORPUS_ARGS=(--patients 1 --studies 1 --series 1 --instances "$VIS_COUNT" --modality-mix MR=1
                  --ts-mix explicit=1 --seed 4242 --pid-prefix VIS)
    gen_corpus "$VCORPUS" "${VCORPUS_ARGS[@]}"
    # Warm the page cache so ingest reads the corpus from memory.
    find "$CORPUS" "$VCORPUS" -name '*.dcm' -type f -exec cat {} + >/dev/null
}

# ---------------------------------------------------------------------------------------------
# 2. Grids
# ---------------------------------------------------------------------------------------------
declare -A R   # results: R[key]
declare -A SITE_PID SITE_DATA SITE_AE SITE_DICOM SITE_HTTP GRID_SITES

# make_grid NAME SITES COPIES [START]: `grid init` into $WORK/NAME on a free port block, faster
# intervals; the sites in START (default: all) started.
make_grid() {
    local name="$1" sites="$2" copies="$3" dir="$WORK/$1" base n s
    GRID_SITES[$name]=$sites
    n=$(awk -F, '{ print NF }' <<<"$sites")
    base=$("$PY" "$HELPER" free-base --sites "$n") || die "no free port block"
    local cmd=("$PACSGRID" grid init --sites "$sites" --out "$dir" --base-port "$base" --copies "$copies")
    R[$name.cmd_init]="$(qcmd "${cmd[@]}")"
    NO_COLOR=1 "${cmd[@]}" >"$LOGS/$name.init.log" 2>&1 || { cat "$LOGS/$name.init.log" >&2; die "grid init failed"; }
    for s in ${sites//,/ }; do
        # init writes both keys explicitly; the defaults (250 ms, 2 s) are for production.
        sed -i 's/^sync_interval_ms = .*/sync_interval_ms = 100/; s/^repair_interval_secs = .*/repair_interval_secs = 1/' "$dir/$s.toml"
        grep -q '^sync_interval_ms = 100$' "$dir/$s.toml" && grep -q '^repair_interval_secs = 1$' "$dir/$s.toml" \
            || die "could not set the grid intervals in $dir/$s.toml"
        cp "$dir/$s.toml" "$LOGS/$name.$s.toml"
        read -r SITE_AE[$name.$s] SITE_DICOM[$name.$s] SITE_HTTP[$name.$s] SITE_DATA[$name.$s] <<<"$("$PY" -c '
import json, sys
for s in json.load(open(sys.argv[1]))["sites"]:
    if s["name"] == sys.argv[2]:
        print(s["ae_title"], s["dicom_port"], s["http_port"], s["data_dir"])' "$dir/grid.json" "$s")"
    done
    R[$name.cmd_serve]="NO_COLOR=1 $(qcmd "$PACSGRID" serve --config "$dir/SITE.toml")"
    start_sites "$name" "${4:-$sites}"
    [ -n "${4:-}" ] && return 0
    timeout 120 "$PY" "$HELPER" wait-grid $(grid_urls "$name") --instances 0 --since-ms 0 --timeout 60 \
        --out "$LOGS/$name.start.json" >/dev/null || die "$name: sites do not all see each other (see $LOGS/$name.start.json)"
}

# start_sites GRID SITES: starts those sites of an initialised grid and waits for their HTTP.
start_sites() {
    local name="$1" sites="$2" s pid
    log "$name: starting sites $sites"
    for s in ${sites//,/ }; do
        NO_COLOR=1 "$PACSGRID" serve --config "$WORK/$name/$s.toml" >"$LOGS/$name.$s.log" 2>&1 &
        pid=$!; PIDS+=("$pid"); SITE_PID[$name.$s]=$pid
    done
    for s in ${sites//,/ }; do
        wait_http "http://$HOST:${SITE_HTTP[$name.$s]}/healthz" "${SITE_PID[$name.$s]}" "$name.$s"
    done
}

# grid_urls GRID: --url arguments for wait-grid, one per site of the grid.
grid_urls() {
    local s
    for s in ${GRID_SITES[$1]//,/ }; do printf -- '--url http://%s:%s ' "$HOST" "${SITE_HTTP[$1.$s]}"; done
}

# stop_grid NAME: stops every site of the grid. WARN/ERROR lines are counted before the stop,
# since stopping makes the survivors warn about the ones already gone.
stop_grid() {
    local name="$1" s
    for s in ${GRID_SITES[$name]//,/ }; do
        R[$name.$s.warnings]=$(grep -cE ' (WARN|ERROR) ' "$LOGS/$name.$s.log" || true)
    done
    for s in ${GRID_SITES[$name]//,/ }; do stop_pid "${SITE_PID[$name.$s]}"; done
    for s in ${GRID_SITES[$name]//,/ }; do
        grep -E ' (WARN|ERROR) ' "$LOGS/$name.$s.log" | head -50 >"$LOGS/$name.$s.warnings.log" || true
        [ -s "$LOGS/$name.$s.warnings.log" ] || rm -f "$LOGS/$name.$s.warnings.log"
    done
    [ "$KEEP" = 1 ] || discard "${WORK:?}/$name"
}

status_url() { echo "http://$HOST:${SITE_HTTP[$1]}"; }

# ---------------------------------------------------------------------------------------------
# 3. Replication: ~1 GB at A, time until K copies; plain copy of the same bytes for scale
# ---------------------------------------------------------------------------------------------
replication() {
    local g=g3 t0 t1 end_ms ok
    local cmd=(timeout 900 "$STORESCU" -v -nh -pdu "$PDU" -aet "$CALLING_AE" -aec "${SITE_AE[$g.a]}" +sd +r +sp '*.dcm'
               "$HOST" "${SITE_DICOM[$g.a]}" "$CORPUS")
    R[cmd_store]="TCP_NODELAY=1 $(qcmd "${cmd[@]:2}")"
    log "replication: C-STORE $INSTANCES instances ($(fdiv "$CORPUS_BYTES" 1000000 1) MB) at A (one association)"
    t0=$(now)
    "${cmd[@]}" >"$LOGS/replication.storescu.log" 2>&1 || log "storescu exited with status $?"
    t1=$(now); end_ms=$(now_ms)
    ok=$(grep -c 'Received Store Response (Success)' "$LOGS/replication.storescu.log" || true)
    R[repl.stored_ok]=$ok
    R[repl.ingest_s]=$(fsub "$t1" "$t0")
    [ "$ok" = "$INSTANCES" ] || log "WARNING: only $ok of $INSTANCES C-STOREs succeeded (see $LOGS/replication.storescu.log)"
    log "replication: ingest took ${R[repl.ingest_s]} s; waiting for K copies (GET /api/v1/grid at A and B, every 100 ms)"
    if timeout 660 "$PY" "$HELPER" wait-grid --url "$(status_url $g.a)" --url "$(status_url $g.b)" \
        --instances "$ok" --since-ms "$end_ms" --timeout 600 --out "$LOGS/replication.wait.json" >/dev/null; then
        R[repl.after_ingest_s]=$(jget "$LOGS/replication.wait.json" 'd["seconds_since"]')
        R[repl.total_s]=$(awk -v a="${R[repl.ingest_s]}" -v b="${R[repl.after_ingest_s]}" 'BEGIN { printf "%.3f\n", a + b }')
        log "replication: K copies ${R[repl.after_ingest_s]} s after the end of ingest (${R[repl.total_s]} s after its start)"
    else
        log "WARNING: the grid did not reach K copies within 600 s (see $LOGS/replication.wait.json)"
        R[repl.after_ingest_s]="n/a"; R[repl.total_s]="n/a"
    fi
    local s
    for s in a b c; do
        R[repl.$s.bytes]=$(blob_bytes "${SITE_DATA[$g.$s]}")
        R[repl.$s.files]=$(blob_files "${SITE_DATA[$g.$s]}")
        R[repl.$s.held]=$(jget "$LOGS/replication.wait.json" "[x['instances_held'] for x in d['status']['$(status_url $g.a)']['sites'] if x['name'] == '$s'][0]")
    done
    R[repl.copies_bytes]=$(( ${R[repl.a.bytes]} + ${R[repl.b.bytes]} + ${R[repl.c.bytes]} ))
    log "replication: blob bytes held: A ${R[repl.a.bytes]}, B ${R[repl.b.bytes]}, C ${R[repl.c.bytes]}"

    plain_copy "${SITE_DATA[$g.a]}"
    R[repl.ratio]=$(fdiv "${R[repl.after_ingest_s]}" "${R[copy.s]}")
    R[repl.ratio_total]=$(fdiv "${R[repl.total_s]}" "${R[copy.s]}")
    log "replication: plain copy of ${R[copy.bytes]} bytes took ${R[copy.s]} s; ratio ${R[repl.ratio]}"
}

# plain_copy DATA: times `cp -r DATA/blobs` to another directory on the same file system, then
# sync. The grid is idle by then; dirty pages are flushed first so the sync times this copy alone.
plain_copy() {
    local t0 t1 dst="$WORK/plaincopy"
    sync
    R[cmd_copy]="cp -r $1/blobs $dst && sync"
    t0=$(now)
    cp -r "$1/blobs" "$dst"
    sync
    t1=$(now)
    R[copy.s]=$(fsub "$t1" "$t0")
    R[copy.bytes]=$(find "$dst" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    discard "$dst"
    log "plain copy of ${R[copy.bytes]} bytes took ${R[copy.s]} s"
}

# Backlog: the same corpus stored at A while B and C are down, then B and C started: time until
# K copies, i.e. the grid moving ~1 GB with nothing else to do (the run above overlaps the copies
# with the ingest, which the "after the end of ingest" figure does not show).
replication_backlog() {
    local g=g3b t0 t1 start_ms ok
    make_grid $g a,b,c 2 a
    log "backlog: C-STORE $INSTANCES instances at A, B and C down"
    t0=$(now)
    timeout 900 "$STORESCU" -v -nh -pdu "$PDU" -aet "$CALLING_AE" -aec "${SITE_AE[$g.a]}" +sd +r +sp '*.dcm' \
        "$HOST" "${SITE_DICOM[$g.a]}" "$CORPUS" >"$LOGS/backlog.storescu.log" 2>&1 || log "storescu exited with status $?"
    t1=$(now)
    ok=$(grep -c 'Received Store Response (Success)' "$LOGS/backlog.storescu.log" || true)
    R[backlog.stored_ok]=$ok
    R[backlog.ingest_s]=$(fsub "$t1" "$t0")
    log "backlog: ingest alone took ${R[backlog.ingest_s]} s ($ok stored OK); starting B and C"
    # Without the first grid, the plain copy is of this A's blobs, with A idle.
    [ "$BACKLOG_ONLY" = 1 ] && plain_copy "${SITE_DATA[$g.a]}"
    sync
    local cpu_a0
    cpu_a0=$(cpu_s "${SITE_PID[$g.a]}")
    start_ms=$(now_ms)
    start_sites $g b,c
    local perf_pid=""
    if [ "$PERF" = 1 ]; then
        # Call graphs of the three sites while they move the backlog (perf stops with the wait).
        perf record -F 499 ${PERF_CALLGRAPH:--g} -o "$LOGS/backlog.perf.data" \
            -p "${SITE_PID[$g.a]},${SITE_PID[$g.b]},${SITE_PID[$g.c]}" >"$LOGS/backlog.perf.log" 2>&1 &
        perf_pid=$!; PIDS+=("$perf_pid")
    fi
    if timeout 660 "$PY" "$HELPER" wait-grid $(grid_urls $g) --instances "$ok" --since-ms "$start_ms" --timeout 600 \
        --out "$LOGS/backlog.wait.json" >/dev/null; then
        R[backlog.s]=$(jget "$LOGS/backlog.wait.json" 'd["seconds_since"]')
    else
        log "WARNING: the backlog did not reach K copies within 600 s (see $LOGS/backlog.wait.json)"
        R[backlog.s]="n/a"
    fi
    # CPU seconds each site used for the backlog (B and C: since they started, start-up included).
    R[backlog.cpu_a]=$(fsub "$(cpu_s "${SITE_PID[$g.a]}")" "$cpu_a0")
    R[backlog.cpu_b]=$(cpu_s "${SITE_PID[$g.b]}")
    R[backlog.cpu_c]=$(cpu_s "${SITE_PID[$g.c]}")
    log "backlog: CPU seconds A ${R[backlog.cpu_a]}, B ${R[backlog.cpu_b]}, C ${R[backlog.cpu_c]}"
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        log "backlog: perf data in $LOGS/backlog.perf.data (perf report -i ... --no-children)"
    fi
    local s
    for s in b c; do R[backlog.$s.bytes]=$(blob_bytes "${SITE_DATA[$g.$s]}"); done
    # When B and C made their first and last copies, and when each site's status settled
    # (seconds after B and C were started): the start-up and the tail around the copying.
    for s in b c; do
        R[backlog.$s.copies_s]=$("$PY" -c '
import datetime, sys
ts = [l.split()[0] for l in open(sys.argv[1]) if "copy made and verified" in l]
at = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() - int(sys.argv[2]) / 1000 for t in ts]
print("%d copies, first %.3f s, last %.3f s" % (len(at), min(at), max(at)) if at else "none")' "$LOGS/$g.$s.log" "$start_ms")
    done
    R[backlog.settled_at]=$(jget "$LOGS/backlog.wait.json" '", ".join("%s %s" % (u.rsplit(":", 1)[-1], t) for u, t in sorted(d["settled_at_s"].items(), key=lambda x: x[1]))')
    log "backlog: B ${R[backlog.b.copies_s]}; C ${R[backlog.c.copies_s]}; settled (HTTP port, s) ${R[backlog.settled_at]}"
    R[backlog.moved_bytes]=$(( ${R[backlog.b.bytes]} + ${R[backlog.c.bytes]} ))
    R[backlog.ratio]=$(fdiv "${R[backlog.s]}" "${R[copy.s]}")
    R[backlog.mbps]=$(fdiv "$(fdiv "${R[backlog.moved_bytes]}" 1000000 3)" "${R[backlog.s]}" 1)
    log "backlog: K copies ${R[backlog.s]} s after B and C were started (${R[backlog.mbps]} MB/s); ratio to the plain copy ${R[backlog.ratio]}"
    stop_grid $g
}

# ---------------------------------------------------------------------------------------------
# 4. Visibility: C-STORE at A, C-FIND at B every 20 ms until found
# ---------------------------------------------------------------------------------------------
visibility() {
    local g=g3
    local cmd=("$PY" "$HELPER" visibility --corpus "$VCORPUS" --count "$VIS_COUNT" --poll-ms 20 --timeout 30
               --calling-ae "$CALLING_AE"
               --store "${SITE_AE[$g.a]}@$HOST:${SITE_DICOM[$g.a]}" --find "${SITE_AE[$g.b]}@$HOST:${SITE_DICOM[$g.b]}")
    R[cmd_vis]="$(qcmd "${cmd[@]}")"
    log "visibility: $VIS_COUNT instances stored one at a time at A, each polled for at B"
    timeout 900 "${cmd[@]}" --out "$LOGS/visibility.json" >/dev/null 2>"$LOGS/visibility.log" \
        || log "WARNING: visibility run failed or incomplete (see $LOGS/visibility.log)"
    local k
    for k in instances stored_ok found timeouts p50_ms p90_ms p99_ms min_ms max_ms mean_ms run_s; do
        R[vis.$k]=$(jget "$LOGS/visibility.json" "d['$k']")
    done
    log "visibility: p50 ${R[vis.p50_ms]} ms, p99 ${R[vis.p99_ms]} ms, found ${R[vis.found]}/${R[vis.instances]}"
}

# ---------------------------------------------------------------------------------------------
# 5. On-the-fly retrieve: 2 sites, copies = 1, a study held only at A, C-GET at B vs at A
# ---------------------------------------------------------------------------------------------
# get_study SITE DIR: one getscu of study $RSTUDY at SITE into DIR; prints the wall time.
# The CPU seconds getscu used are left in $WORK/getscu.cpu: the `times` builtin, run in the
# command substitution's own shell before and after it (children's user + system).
get_study() {
    local key="$1" dir="$2" t0 t1
    rm -rf "$dir"; mkdir -p "$dir"
    times >"$WORK/times.0"
    t0=$(now)
    timeout 300 "$GETSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec "${SITE_AE[$key]}" -k QueryRetrieveLevel=STUDY \
        -k "StudyInstanceUID=$RSTUDY" -od "$dir" "$HOST" "${SITE_DICOM[$key]}" >>"$LOGS/retrieve.getscu.log" 2>&1 \
        || log "getscu at $key exited with status $?"
    t1=$(now)
    times >"$WORK/times.1"
    awk 'FNR == 2 { split($1, u, "m"); split($2, s, "m"); c[FILENAME] = u[1] * 60 + u[2] + s[1] * 60 + s[2] }
         END { printf "%.3f\n", c[ARGV[2]] - c[ARGV[1]] }' "$WORK/times.0" "$WORK/times.1" >"$WORK/getscu.cpu"
    fsub "$t1" "$t0"
}

retrieve() {
    local g=g2 ok
    make_grid $g a,b 1
    log "retrieve: C-STORE $RCOUNT instances (first patient of the corpus) at A"
    timeout 300 "$STORESCU" -v -nh -pdu "$PDU" -aet "$CALLING_AE" -aec "${SITE_AE[$g.a]}" +sd +r +sp '*.dcm' \
        "$HOST" "${SITE_DICOM[$g.a]}" "$RPATIENT_DIR" >"$LOGS/retrieve.storescu.log" 2>&1 || log "storescu exited with status $?"
    ok=$(grep -c 'Received Store Response (Success)' "$LOGS/retrieve.storescu.log" || true)
    timeout 200 "$PY" "$HELPER" wait-grid --url "$(status_url $g.a)" --url "$(status_url $g.b)" \
        --instances "$ok" --since-ms "$(now_ms)" --timeout 120 --out "$LOGS/retrieve.wait.json" >/dev/null \
        || log "WARNING: the copies = 1 grid did not settle (see $LOGS/retrieve.wait.json)"
    "$PY" "$HELPER" holders --url "$(status_url $g.b)" --corpus "$RPATIENT_DIR" --out "$LOGS/retrieve.holders.json" >/dev/null \
        || die "could not read holders from B"
    # A study whose every instance is held by A alone.
    read -r RSTUDY RSTUDY_N RSTUDY_BYTES <<<"$("$PY" -c '
import json, sys
for s in json.load(open(sys.argv[1]))["studies"]:
    if s["holders"] == {"a": s["instances"]}:
        print(s["study"], s["instances"], s["bytes"]); break
else:
    print("none 0 0")' "$LOGS/retrieve.holders.json")"
    R[get.holders]=$("$PY" -c 'import json,sys; print("; ".join(str(s["holders"]) for s in json.load(open(sys.argv[1]))["studies"]))' "$LOGS/retrieve.holders.json")
    if [ "$RSTUDY" = none ]; then
        log "WARNING: no study of the first patient is held by A alone (holders: ${R[get.holders]}); no retrieve figures"
        stop_grid $g
        return 0
    fi
    R[get.study]=$RSTUDY; R[get.instances]=$RSTUDY_N; R[get.bytes]=$RSTUDY_BYTES
    R[cmd_get]="TCP_NODELAY=1 $(qcmd "$GETSCU" -S -pdu "$PDU" -aet "$CALLING_AE" -aec AE -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$RSTUDY" -od DIR "$HOST" PORT)"
    log "retrieve: study $RSTUDY ($RSTUDY_N instances, $(fdiv "$RSTUDY_BYTES" 1000000 1) MB) held only at A"

    # Once, checked: at B (the bytes come from A on the fly) against the originals.
    local vdir="$WORK/get-verify"
    R[get.verify_s]=$(get_study $g.b "$vdir")
    "$PY" "$HELPER" compare --orig "$RPATIENT_DIR" --got "$vdir" --study "$RSTUDY" --out "$LOGS/retrieve.compare.json" >/dev/null \
        || log "WARNING: C-GET at B did not return the original bytes (see $LOGS/retrieve.compare.json)"
    R[get.verify]="$(jget "$LOGS/retrieve.compare.json" '"%d/%d datasets identical (%d whole files), %d received, %d missing" % (d["identical_datasets"], d["expected"], d["identical_files"], d["received"], d["missing"])')"
    log "retrieve: check at B: ${R[get.verify]}"
    rm -rf "$vdir"

    # Timed: A and B alternately, so drift in machine load hits both alike.
    # CPU seconds of A and B are summed over the runs at each site: per C-GET at A (A alone
    # works) and per C-GET at B (B and A, which serves the bytes).
    local i ta tb na nb as=() bs=() gdir="$WORK/get" pa=${SITE_PID[$g.a]} pb=${SITE_PID[$g.b]}
    local ca0 cb0 ga_a=0 ga_b=0 gb_a=0 gb_b=0 ga_scu=0 gb_scu=0
    R[get.files_ok]=1
    for i in $(seq 1 "$GET_REPEATS"); do
        ca0=$(cpu_s "$pa"); cb0=$(cpu_s "$pb")
        ta=$(get_study $g.a "$gdir"); na=$(find "$gdir" -type f | wc -l)
        ga_a=$(awk -v s="$ga_a" -v a="$(cpu_s "$pa")" -v b="$ca0" 'BEGIN { print s + a - b }')
        ga_b=$(awk -v s="$ga_b" -v a="$(cpu_s "$pb")" -v b="$cb0" 'BEGIN { print s + a - b }')
        ga_scu=$(awk -v s="$ga_scu" -v a="$(cat "$WORK/getscu.cpu")" 'BEGIN { print s + a }')
        ca0=$(cpu_s "$pa"); cb0=$(cpu_s "$pb")
        tb=$(get_study $g.b "$gdir"); nb=$(find "$gdir" -type f | wc -l)
        gb_a=$(awk -v s="$gb_a" -v a="$(cpu_s "$pa")" -v b="$ca0" 'BEGIN { print s + a - b }')
        gb_b=$(awk -v s="$gb_b" -v a="$(cpu_s "$pb")" -v b="$cb0" 'BEGIN { print s + a - b }')
        gb_scu=$(awk -v s="$gb_scu" -v a="$(cat "$WORK/getscu.cpu")" 'BEGIN { print s + a }')
        as+=("$ta"); bs+=("$tb")
        log "retrieve: run $i: A (local) $ta s ($na files), B (on the fly) $tb s ($nb files)"
        if [ "$na" != "$RSTUDY_N" ] || [ "$nb" != "$RSTUDY_N" ]; then
            R[get.files_ok]=0
            log "WARNING: expected $RSTUDY_N files (see $LOGS/retrieve.getscu.log)"
        fi
    done
    if [ "$PERF" = 1 ]; then
        # Call graphs of A and B during as many more C-GETs at B, after the timed ones.
        local perf_pid
        perf record -F 999 ${PERF_CALLGRAPH:--g} -o "$LOGS/retrieve.perf.data" -p "$pa,$pb" \
            >"$LOGS/retrieve.perf.log" 2>&1 &
        perf_pid=$!; PIDS+=("$perf_pid")
        sleep 0.5
        for i in $(seq 1 "$GET_REPEATS"); do get_study $g.b "$gdir" >/dev/null; done
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        log "retrieve: perf data in $LOGS/retrieve.perf.data (C-GETs at B)"
    fi
    rm -rf "$gdir"
    R[get.a_s]=$(median "${as[@]}"); R[get.b_s]=$(median "${bs[@]}")
    R[get.a_all]="${as[*]}"; R[get.b_all]="${bs[*]}"
    R[get.ratio]=$(fdiv "${R[get.b_s]}" "${R[get.a_s]}")
    R[get.cpu_at_a]="A $(fdiv "$ga_a" "$GET_REPEATS" 3) s, B $(fdiv "$ga_b" "$GET_REPEATS" 3) s, getscu $(fdiv "$ga_scu" "$GET_REPEATS" 3) s"
    R[get.cpu_at_b]="A $(fdiv "$gb_a" "$GET_REPEATS" 3) s, B $(fdiv "$gb_b" "$GET_REPEATS" 3) s, getscu $(fdiv "$gb_scu" "$GET_REPEATS" 3) s"
    log "retrieve: CPU per C-GET at A: ${R[get.cpu_at_a]}; per C-GET at B: ${R[get.cpu_at_b]}"
    # B must not have kept the bytes (cache_retrieved = false): every run above was remote.
    "$PY" "$HELPER" holders --url "$(status_url $g.b)" --corpus "$RPATIENT_DIR" --out "$LOGS/retrieve.holders-after.json" >/dev/null || true
    R[get.b_blob_files]=$(blob_files "${SITE_DATA[$g.b]}")
    log "retrieve: median A ${R[get.a_s]} s, B ${R[get.b_s]} s, ratio ${R[get.ratio]}; B holds ${R[get.b_blob_files]} blob files"
    stop_grid $g
}

# ---------------------------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------------------------
v() { echo "${R[$1]:-n/a}"; }
verdict() {  # verdict VALUE TARGET: "yes" when VALUE <= TARGET
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || a == "") print "n/a"; else if (a + 0 <= b + 0) print "yes"; else print "NO" }'
}
report() {
    local md="$GOUT/results.md" json="$GOUT/results.json"
    R[run_s]=$(fsub "$(now)" "$RUN_T0")
    R[load_start]=$LOAD_START
    R[pacsgrid]="$PACSGRID_VERSION $PACSGRID"
    R[dcmtk]=$DCMTK_VERSION
    R[corpus.instances]=$INSTANCES
    R[corpus.bytes]=$CORPUS_BYTES
    R[load_end]="$(cut -d' ' -f1-3 /proc/loadavg)"
    {
        echo "# pacsgrid grid benchmark"
        echo
        echo "- date: $RUN_DATE"
        echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
        echo "- load average at start: $LOAD_START; at end: $(v load_end)"
        echo "- pacsgrid: $PACSGRID_VERSION (git $GIT_REV), binary $PACSGRID; dcmtk $DCMTK_VERSION"
        echo "- grids: \`grid init\` on loopback, sync_interval_ms = 100, repair_interval_secs = 1, other settings as written by init"
        echo
        echo "| measurement | result | target | met |"
        echo "|---|---:|---:|:---:|"
        echo "| visibility at B after C-STORE success at A, p50 | $(v vis.p50_ms) ms | <= 1000 ms | $(verdict "$(v vis.p50_ms)" 1000) |"
        echo "| visibility, p99 | $(v vis.p99_ms) ms | | |"
        echo "| K = 2 copies of $INSTANCES CT ($(fdiv "$CORPUS_BYTES" 1000000 0) MB), after the end of ingest | $(v repl.after_ingest_s) s | | |"
        echo "| plain copy of the same bytes (cp -r + sync) | $(v copy.s) s | | |"
        echo "| replication after the end of ingest / plain copy | $(v repl.ratio) | <= 1.5 | $(verdict "$(v repl.ratio)" 1.5) |"
        echo "| backlog: K = 2 copies after B and C start, the corpus already at A | $(v backlog.s) s | | |"
        echo "| backlog / plain copy | $(v backlog.ratio) | <= 1.5 | $(verdict "$(v backlog.ratio)" 1.5) |"
        echo "| C-GET study at A (local), median of $GET_REPEATS | $(v get.a_s) s | | |"
        echo "| C-GET study at B (on the fly from A), median of $GET_REPEATS | $(v get.b_s) s | | |"
        echo "| remote / local C-GET | $(v get.ratio) | <= 1.5 | $(verdict "$(v get.ratio)" 1.5) |"
        echo
        echo "Details:"
        echo
        echo "- visibility: $(v vis.found)/$(v vis.instances) found ($(v vis.stored_ok) stored OK, $(v vis.timeouts) timeouts);" \
             "min $(v vis.min_ms), mean $(v vis.mean_ms), p90 $(v vis.p90_ms), max $(v vis.max_ms) ms; MR 256x256 instances," \
             "C-FIND IMAGE level polled every 20 ms on one open association to B; measured on the 3-site grid after the replication run"
        echo "- replication: 3 sites, copies = 2; ingest at A (one storescu association) $(v repl.ingest_s) s, $(v repl.stored_ok)/$INSTANCES stored OK;" \
             "K copies $(v repl.total_s) s after the start of ingest ($(v repl.ratio_total) x the plain copy);" \
             "settled = at A and at B: under_replicated 0 counted after the end of ingest, lag 0 for every site, all $INSTANCES instances known"
        echo "- bytes in blobs: corpus $CORPUS_BYTES; A $(v repl.a.bytes) ($(v repl.a.files) files, $(v repl.a.held) instances held);" \
             "B $(v repl.b.bytes) ($(v repl.b.files) files, $(v repl.b.held) held); C $(v repl.c.bytes) ($(v repl.c.files) files, $(v repl.c.held) held);" \
             "all sites $(v repl.copies_bytes); plain copy $(v copy.bytes)"
        echo "- backlog: ingest at A with B and C down $(v backlog.ingest_s) s ($(v backlog.stored_ok)/$INSTANCES stored OK; compare $(v repl.ingest_s) s with replication running);" \
             "then B and C started and K copies reached $(v backlog.s) s later (site start-up included), $(v backlog.moved_bytes) bytes moved, $(v backlog.mbps) MB/s;" \
             "B $(v backlog.b.bytes), C $(v backlog.c.bytes) bytes;" \
             "CPU seconds A $(v backlog.cpu_a), B $(v backlog.cpu_b), C $(v backlog.cpu_c);" \
             "B $(v backlog.b.copies_s), C $(v backlog.c.copies_s) after the start; sites settled (HTTP port, s): $(v backlog.settled_at)"
        echo "- retrieve: 2 sites, copies = 1, study $(v get.study) ($(v get.instances) instances, $(fdiv "$(v get.bytes)" 1000000 1) MB);" \
             "holders per study (at B): $(v get.holders)"
        echo "  - C-GET at B checked against the originals: $(v get.verify)"
        echo "  - all runs (s): A $(v get.a_all); B $(v get.b_all); B's blob files after the runs: $(v get.b_blob_files)"
        echo "  - CPU seconds of the sites per C-GET at A: $(v get.cpu_at_a); per C-GET at B: $(v get.cpu_at_b)"
        echo "- WARN/ERROR lines in the site logs: $(for k in "${!R[@]}"; do case "$k" in *.warnings) echo "$k=${R[$k]}" ;; esac; done | sort | tr '\n' ' ')"
        echo
        echo "## Commands"
        echo
        echo '```'
        qcmd "$PY" "$GEN" --out "$CORPUS" "${CORPUS_ARGS[@]}"
        qcmd "$PY" "$GEN" --out "$VCORPUS" "${VCORPUS_ARGS[@]}"
        echo "$(v g3.cmd_init)   # then sync_interval_ms = 100, repair_interval_secs = 1 in each SITE.toml"
        echo "$(v g3.cmd_serve) &   # SITE = a, b, c"
        echo "$(v cmd_store)"
        echo "$(v cmd_copy)"
        echo "$(v cmd_vis)"
        echo "# backlog: a new grid like the first, only a started, the same storescu to it, then b and c started"
        echo "$(v g2.cmd_init)"
        echo "$(v cmd_get)   # AE/PORT of A and of B, x$GET_REPEATS each"
        echo '```'
        echo
        echo "Benchmark run took $(v run_s) s."
    } >"$md"
    local k
    for k in "${!R[@]}"; do printf '%s\t%s\n' "$k" "${R[$k]}"; done >"$WORK/results.tsv"
    "$PY" - "$WORK/results.tsv" "$json" "$RUN_DATE" "$GIT_REV" "$LOGS" <<'EOF'
import json, os, sys
tsv, out, date, rev, logs = sys.argv[1:6]
def num(x):
    try:
        return int(x)
    except ValueError:
        try:
            return float(x)
        except ValueError:
            return None if x == "n/a" else x
flat = {}
for line in open(tsv):
    k, _, v = line.rstrip("\n").partition("\t")
    flat[k] = num(v)
res = {"date": date, "git": rev, "results": dict(sorted(flat.items()))}
p = os.path.join(logs, "visibility.json")
if os.path.exists(p):
    res["visibility_delays_ms"] = json.load(open(p)).get("delays_ms", [])
json.dump(res, open(out, "w"), indent=2)
EOF
    echo
    cat "$md"
    log "written $md and $json; logs in $LOGS"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*
[ -f "$GEN" ] || die "gen_dataset.py not found at $GEN (set PACSGRID_SHARED to the directory holding data/gen_dataset.py)"
install_deps
RUN_DATE="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || GIT_REV="$GIT_REV+dirty"
DCMTK_VERSION="$(dpkg-query -W -f='${Version}' dcmtk 2>/dev/null || echo '?')"

if [ "$BUILD" = 1 ] && [ -z "${PACSGRID_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup), or pass --no-build / PACSGRID_BIN"
    log "building pacsgrid (cargo build --release -p pacsgrid)"
    t0=$(now)
    (cd "$REPO" && cargo build --release -p pacsgrid) >"$LOGS/cargo-build.log" 2>&1 \
        || { tail -30 "$LOGS/cargo-build.log" >&2; die "cargo build failed (log: $LOGS/cargo-build.log)"; }
    log "built in $(fsub "$(now)" "$t0") s"
fi
[ -x "$PACSGRID" ] || die "$PACSGRID not found (build it, or set PACSGRID_BIN)"
PACSGRID_VERSION="$("$PACSGRID" --version 2>/dev/null | awk '{ print $2 }' || echo '?')"

RUN_T0=$(now)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pacsgrid-gridbench.XXXXXX")"
make_corpora
log "corpus: $INSTANCES CT instances, $(fdiv "$CORPUS_BYTES" 1000000 1) MB; visibility: $VIS_COUNT MR instances"
settle_deletions

if [ "$BACKLOG_ONLY" = 1 ]; then
    replication_backlog
elif [ "$GET_ONLY" = 1 ]; then
    retrieve
else
    make_grid g3 a,b,c 2
    replication
    visibility
    stop_grid g3
    replication_backlog
    retrieve
fi
report
