#!/usr/bin/env bash
# Focused WADO-RS study retrieval timing: pacsgrid against Orthanc (+ DICOMweb plugin) on one
# 100-instance CT study, one server at a time, curl into /dev/null after one checked download.
# Usage: bench/wado-speed.sh [--repeats N] [--targets orthanc,pacsgrid] [--bin PATH] [--work DIR]
# The work dir keeps both servers' data between runs, so only the first run ingests.
set -euo pipefail
REPEATS=20; TARGETS=orthanc,pacsgrid; WORK=${TMPDIR:-/tmp}/pacsgrid-wado-speed
HERE=$(cd "$(dirname "$0")" && pwd); BIN=$HERE/../target/release/pacsgrid
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats) REPEATS=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done
CORPUS=$WORK/corpus
mkdir -p "$WORK"
export TCP_NODELAY=1
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT
if [ ! -f "$CORPUS/.done" ]; then
    python3 "${GEN:-/work/shared/data/gen_dataset.py}" --out "$CORPUS" --patients 1 --studies 1 \
        --series 2 --instances 50 --modality-mix CT=1 --ts-mix explicit=1 >/dev/null
    touch "$CORPUS/.done"
fi
STUDY_BYTES=$(find "$CORPUS" -name '*.dcm' -printf '%s\n' | awk '{ s += $1 } END { print s }')
cat $(find "$CORPUS" -name '*.dcm') >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer at $1" >&2; exit 1; }
ingest() { # AE PORT DIR
    [ -f "$3/.ingested" ] && return 0
    /usr/bin/storescu -q -nh -pdu 131072 -aet BENCHSCU -aec "$1" +sd +r +sp '*.dcm' 127.0.0.1 "$2" "$CORPUS"
    touch "$3/.ingested"
}
measure() { # NAME BASE
    local study url accept='multipart/related; type="application/dicom"; transfer-syntax=*'
    study=$(curl -fsS -H 'Accept: application/dicom+json' "$2/studies" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["0020000D"]["Value"][0])')
    url="$2/studies/$study"
    curl -fsS -H "Accept: $accept" -o "$WORK/$1.wado" "$url"
    local parts size
    parts=$(grep -a -c -i '^content-type: *application/dicom' "$WORK/$1.wado" || true)
    size=$(stat -c %s "$WORK/$1.wado"); rm -f "$WORK/$1.wado"
    local times=()
    for _ in $(seq "$REPEATS"); do
        times+=("$(curl -fsS -H "Accept: $accept" -o /dev/null -w '%{time_total}' "$url")")
    done
    printf '%s\n' "${times[@]}" | python3 -c '
import sys, statistics as st
t = [float(x) for x in sys.stdin.read().split()]
name, n, b, parts, size = sys.argv[1], len(t), int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"{name:9s} parts {parts} bytes {size}  x{n}: mean {st.mean(t)*1000:.1f} ms  median {st.median(t)*1000:.1f} ms  best {min(t)*1000:.1f} ms  "
      f"mean {b/1e6/st.mean(t):.0f} MB/s  median {b/1e6/st.median(t):.0f} MB/s")' "$1" "$STUDY_BYTES" "$parts" "$size"
    echo "  curl -s -H 'Accept: $accept' -o /dev/null $url   # x$REPEATS"
}
for t in ${TARGETS//,/ }; do
    dport=$(free_port); hport=$(free_port)
    case "$t" in
    orthanc)
        dir=$WORK/orthanc; mkdir -p "$dir/storage" "$dir/index"
        cat >"$dir/config.json" <<JSON
{ "Name": "wado-speed", "StorageDirectory": "$dir/storage", "IndexDirectory": "$dir/index",
  "StorageCompression": false, "Plugins": [ "/usr/share/orthanc/plugins/libOrthancDicomWeb.so" ],
  "HttpServerEnabled": true, "HttpPort": $hport, "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "DicomServerEnabled": true, "DicomAet": "ORTHANC",
  "MaximumPduLength": 131072, "DicomPort": $dport, "DicomCheckCalledAet": false,
  "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true, "SaveJobs": false }
JSON
        /usr/sbin/Orthanc "$dir/config.json" >"$WORK/orthanc.log" 2>&1 & PIDS+=($!)
        wait_http "http://127.0.0.1:$hport/system"; sleep 0.5
        ingest ORTHANC "$dport" "$dir"
        measure orthanc "http://127.0.0.1:$hport/dicom-web" ;;
    pacsgrid)
        dir=$WORK/pacsgrid; mkdir -p "$dir"
        NO_COLOR=1 "$BIN" serve --data "$dir" --dicom-port "$dport" --http-port "$hport" >"$WORK/pacsgrid.log" 2>&1 & PIDS+=($!)
        wait_http "http://127.0.0.1:$hport/healthz"; sleep 0.3
        ingest PACSGRID "$dport" "$dir"
        measure pacsgrid "http://127.0.0.1:$hport/dicom-web" ;;
    esac
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done
