#!/usr/bin/env bash
# What the researcher's de-identified view costs on WADO-RS: one 100-instance CT study
# (explicit VR, ~52.6 MB) retrieved as stored by a clinician key and de-identified by a
# researcher key from the same node, curl into /dev/null after one checked download each,
# alternating; then the node's peak resident memory (VmHWM).
# Usage: bench/deid-speed.sh [--repeats N] [--bin PATH] [--work DIR]
set -euo pipefail
REPEATS=20; WORK=${TMPDIR:-/tmp}/pacsgrid-deid-speed
HERE=$(cd "$(dirname "$0")" && pwd); BIN=$HERE/../target/release/pacsgrid
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats) REPEATS=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done
CORPUS=$WORK/corpus; DATA=$WORK/data; CONF=$WORK/pacsgrid.toml
mkdir -p "$WORK"
export TCP_NODELAY=1
PID=
trap '[ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }' EXIT
if [ ! -f "$CORPUS/.done" ]; then
    python3 "${GEN:-/work/shared/data/gen_dataset.py}" --out "$CORPUS" --patients 1 --studies 1 \
        --series 2 --instances 50 --modality-mix CT=1 --ts-mix explicit=1 >/dev/null
    touch "$CORPUS/.done"
fi
STUDY_BYTES=$(find "$CORPUS" -name '*.dcm' -printf '%s\n' | awk '{ s += $1 } END { print s }')
key() { # NAME ROLE -> appends the entry to $CONF, prints the key
    local out; out=$("$BIN" access new-key --name "$1" --role "$2")
    printf '\n%s\n' "${out#*\[\[access.http.api_key\]\]}" | sed '2s/^/[[access.http.api_key]]/' >>"$CONF"
    grep -o 'pgk_[A-Za-z0-9_-]*' <<<"$out" | head -1
}
: >"$CONF"
CLINICIAN=$(key bench-clinician clinician); RESEARCHER=$(key bench-researcher researcher)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dport=$(free_port); hport=$(free_port)
NO_COLOR=1 "$BIN" serve --config "$CONF" --data "$DATA" --dicom-port "$dport" --http-port "$hport" >"$WORK/pacsgrid.log" 2>&1 & PID=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$hport/healthz" 2>/dev/null && break; sleep 0.1; done
if [ ! -f "$DATA/.ingested" ]; then
    /usr/bin/storescu -q -nh -pdu 131072 -aet BENCHSCU -aec PACSGRID +sd +r +sp '*.dcm' 127.0.0.1 "$dport" "$CORPUS"
    touch "$DATA/.ingested"
fi
BASE=http://127.0.0.1:$hport/dicom-web
ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*'
study=$(curl -fsS -H "Authorization: Bearer $CLINICIAN" "$BASE/studies" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["0020000D"]["Value"][0])')
url=$BASE/studies/$study
declare -A T
for who in clinician researcher; do
    k=$CLINICIAN; [ "$who" = researcher ] && k=$RESEARCHER
    curl -fsS -H "Authorization: Bearer $k" -H "Accept: $ACCEPT" -o "$WORK/$who.wado" "$url"
    echo "$who: $(grep -a -c -i '^content-type: *application/dicom' "$WORK/$who.wado") parts, $(stat -c %s "$WORK/$who.wado") bytes"
    rm -f "$WORK/$who.wado"
done
for _ in $(seq "$REPEATS"); do
    for who in clinician researcher; do
        k=$CLINICIAN; [ "$who" = researcher ] && k=$RESEARCHER
        T[$who]+="$(curl -fsS -H "Authorization: Bearer $k" -H "Accept: $ACCEPT" -o /dev/null -w '%{time_total}' "$url") "
    done
done
for who in clinician researcher; do
    printf '%s\n' ${T[$who]} | python3 -c '
import sys, statistics as st
t = [float(x) for x in sys.stdin.read().split()]
name, b = sys.argv[1], int(sys.argv[2])
print(f"{name:10s} x{len(t)}: mean {st.mean(t)*1000:.1f} ms  median {st.median(t)*1000:.1f} ms  best {min(t)*1000:.1f} ms  median {b/1e6/st.median(t):.0f} MB/s")' "$who" "$STUDY_BYTES"
done
echo "node peak RSS: $(awk '/VmHWM/ { print $2, $3 }' /proc/$PID/status)"
echo "  curl -s -H 'Authorization: Bearer <key>' -H 'Accept: $ACCEPT' -o /dev/null $url   # x$REPEATS each, alternating"
