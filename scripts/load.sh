#!/usr/bin/env bash
# The push load scenario (issue "Pipeline", item "Load"; results in docs/performance.md).
#
# For plaintext and safe-mode text pushes that match scripts/load-rules/load.toml, measures in
# the same run: the maximum throughput of a release `kefu serve` and of examples/ceiling.rs (the
# smallest actix-web server answering `success`), their ratio, and kefu's p99 answer latency at
# about half its maximum rate. kefu runs against the mock WeChat API (examples/mock_wechat.rs),
# so with `passive_first = false` every push's reply really goes to `custom/send`.
#
#   scripts/load.sh                 # builds (release) if needed, runs everything, ~6 minutes
#   REPEAT=1 MODES=safe PATHS=send DURATION=5s scripts/load.sh
#
# Knobs (environment): DURATION (10s), CONNS (32), THREADS (2), REPEAT (2), MODES ("plain safe"),
# PATHS ("passive send": passive_first true / false), BODIES (safe-mode pushes generated per
# run, 400000), CAL_DURATION (3s, the pacing calibration run), OPENIDS (20000 simulated
# followers), RUST_LOG (info, kefu's default), NO_BUILD=1, SEND_DELAY_MS (0: latency of the
# mock's custom/send), OUT (results directory), STATE_BASE (where kefu's state dirs go, default
# OUT; /dev/shm shows what the fsyncs cost), SYNC (state.sync: full, the default, or normal),
# PORT_MOCK/PORT_CEIL/PORT_KEFU (9310/9311/9312).
# Needs wrk (Debian: apt-get install wrk) and curl.
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-2}
MODES=${MODES:-plain safe}
PATHS=${PATHS:-passive send}
BODIES=${BODIES:-400000}
CAL_DURATION=${CAL_DURATION:-3s}
OPENIDS=${OPENIDS:-20000}
SEND_DELAY_MS=${SEND_DELAY_MS:-0}
SYNC=${SYNC:-full}
PORT_MOCK=${PORT_MOCK:-9310}
PORT_CEIL=${PORT_CEIL:-9311}
PORT_KEFU=${PORT_KEFU:-9312}
export RUST_LOG=${RUST_LOG:-info}
OUT=${OUT:-$ROOT/target/load/$(date +%Y%m%d-%H%M%S)}
STATE_BASE=${STATE_BASE:-$OUT}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TOKEN=pamtest
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
APP_ID=wxb11529c136998cb6

die() { echo "load.sh: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (Debian/Ubuntu: apt-get install wrk)"
command -v curl >/dev/null || die "curl is not installed"

if [[ -z ${NO_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --bin kefu --example mock_wechat --example ceiling \
        --example load_requests)
fi
for b in kefu examples/mock_wechat examples/ceiling examples/load_requests; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run without NO_BUILD=1"
done

mkdir -p "$OUT"
echo "results in $OUT"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start() { # start NAME CMD... : runs CMD in the background, logs to $OUT/NAME.log, sets LAST_PID
    local name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wait_up() { # wait_up URL : until it answers at all (any status), at most 20 s
    for _ in $(seq 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "nothing answers at $1 (see the logs in $OUT)"
}

stop() { # stop PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

snapshot() { # what else is running, for the record
    {
        echo "== $1 $(date -Is)"
        uptime
        ps -eo pcpu,pmem,etime,comm --sort=-pcpu | head -12
    } >>"$OUT/machine.txt"
}

fsync_probe() { # the latency of one synced 4 KiB write where kefu keeps its state
    local f="$STATE_BASE/fsync-probe.$$" t
    t=$(dd if=/dev/zero of="$f" bs=4k count=100 oflag=dsync 2>&1 | awk '/copied/ { print $(NF-3) }')
    rm -f "$f"
    awk -v t="$t" 'BEGIN { printf "%.2f ms per synced write", t * 1000 / 100 }'
}

gen() { # gen MODE FILE [COUNT]
    "$BIN/examples/load_requests" --mode "$1" --out "$2" --count "${3:-$BODIES}" \
        --openids "$OPENIDS" --token "$TOKEN" --aes-key "$AES_KEY" --app-id "$APP_ID"
}

# wrk_run LABEL PORT MODE REQFILE DELAY_MS : one bounded wrk run; sets R_* from its RESULT line.
wrk_run() {
    local label=$1 port=$2 mode=$3 req=$4 delay=$5 args
    if [[ $mode == plain ]]; then args=("$req" "$OPENIDS"); else args=("$req" "$THREADS"); fi
    PUSH_DELAY_MS=$delay wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency \
        -s "$ROOT/scripts/push_$mode.lua" "http://127.0.0.1:$port/wechat" -- "${args[@]}" \
        >"$OUT/$label.txt" 2>&1 || die "wrk failed, see $OUT/$label.txt"
    local line
    line=$(sed -n 's/^RESULT //p' "$OUT/$label.txt")
    [[ -n $line ]] || die "no RESULT line in $OUT/$label.txt"
    for kv in $line; do
        printf -v "R_${kv%%=*}" '%s' "${kv#*=}"
    done
}

metric() { # metric REGEX : the sum of the kefu metric lines matching REGEX
    curl -s "http://127.0.0.1:$PORT_KEFU/metrics" |
        awk -v re="$1" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d", s }'
}

drain() { # let the sender finish the previous run's sends before the next run, at most 60 s
    for _ in $(seq 120); do
        [[ $(metric '^kefu_outbox_depth') == 0 ]] && return 0
        sleep 0.5
    done
    echo "load.sh: warning: the outbox did not drain within 60 s" >&2
}

# check_answer MODE PATH : one push by curl; the answer must be the passive reply or `success`.
check_answer() {
    local mode=$1 path=$2 req="$OUT/check-$mode.req" query body url answer
    gen "$mode" "$req" 1
    query=$(head -1 "$req")
    if [[ $mode == plain ]]; then
        local ts
        ts=$(sed 's/.*timestamp=\([0-9]*\).*/\1/' <<<"$query")
        body="<xml><ToUserName><![CDATA[gh_loadtest00001]]></ToUserName><FromUserName><![CDATA[oLoadcheck]]></FromUserName><CreateTime>$ts</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[price?]]></Content><MsgId>1$RANDOM$RANDOM</MsgId></xml>"
        url="http://127.0.0.1:$PORT_KEFU/wechat?$query"
    else
        local line
        line=$(sed -n 2p "$req")
        body=${line#*$'\t'}
        url="http://127.0.0.1:$PORT_KEFU/wechat?$query&encrypt_type=aes&msg_signature=${line%%$'\t'*}"
    fi
    answer=$(curl -s -w ' HTTP%{http_code}' -H 'Content-Type: text/xml' --data-binary "$body" "$url")
    echo "check $mode/$path: $answer" >>"$OUT/checks.txt"
    case "$mode/$path/$answer" in
        plain/passive/*"Our prices are on the website"*HTTP200) ;;
        safe/passive/*"<Encrypt>"*HTTP200) ;;
        */send/"success HTTP200") ;;
        *) die "unexpected answer for a $mode push ($path): $answer" ;;
    esac
}

fmt_ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

start mock "$BIN/examples/mock_wechat" --port "$PORT_MOCK" --send-delay-ms "$SEND_DELAY_MS"
start ceiling "$BIN/examples/ceiling" --port "$PORT_CEIL"
wait_up "http://127.0.0.1:$PORT_MOCK/"
wait_up "http://127.0.0.1:$PORT_CEIL/"

FSYNC=$(fsync_probe)
SUMMARY="$OUT/summary.md"
{
    echo "wrk -t$THREADS -c$CONNS -d$DURATION; RUST_LOG=$RUST_LOG; $OPENIDS followers; state in $STATE_BASE (state.sync = $SYNC); mock send delay ${SEND_DELAY_MS} ms; $(nproc) CPUs; fsync probe: $FSYNC"
    echo
    echo "| mode | reply | rep | ceiling req/s | kefu req/s | kefu/ceiling | half pace req/s: achieved of target | kefu p50 ms | kefu p99 ms | ceiling p99 ms at same pace | kefu non-2xx | wraps |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$SUMMARY"

snapshot start
for mode in $MODES; do
    for path in $PATHS; do
        passive=true
        [[ $path == send ]] && passive=false
        state="$STATE_BASE/state-$mode-$path-$$"
        cfg="$OUT/kefu-$mode-$path.toml"
        cat >"$cfg" <<EOF
[server]
listen = "127.0.0.1:$PORT_KEFU"
path = "/wechat"
[wechat]
app_id = "$APP_ID"
app_secret = "load-test-secret"
token = "$TOKEN"
encoding_aes_key = "$AES_KEY"
api_base = "http://127.0.0.1:$PORT_MOCK"
[rules]
dir = "$ROOT/scripts/load-rules"
hot_reload = false
passive_first = $passive
[state]
dir = "$state"
sync = "$SYNC"
EOF
        start "kefu-$mode-$path" "$BIN/kefu" serve --config "$cfg"
        kefu_pid=$LAST_PID
        wait_up "http://127.0.0.1:$PORT_KEFU/healthz"
        check_answer "$mode" "$path"
        drain
        for rep in $(seq "$REPEAT"); do
            tag="$mode-$path-$rep"
            req="$OUT/$tag.req"
            gen "$mode" "$req"
            # Alternate who goes first so a drift in the machine's load favours neither.
            if ((rep % 2)); then
                wrk_run "$tag-ceiling-max" "$PORT_CEIL" "$mode" "$req" 0
                c_rps=$R_rps
                wrk_run "$tag-kefu-max" "$PORT_KEFU" "$mode" "$req" 0
            else
                wrk_run "$tag-kefu-max" "$PORT_KEFU" "$mode" "$req" 0
                k_save=("$R_rps" "$R_non2xx" "$R_wraps")
                wrk_run "$tag-ceiling-max" "$PORT_CEIL" "$mode" "$req" 0
                c_rps=$R_rps
                R_rps=${k_save[0]} R_non2xx=${k_save[1]} R_wraps=${k_save[2]}
            fi
            k_rps=$R_rps k_non2xx=$R_non2xx k_wraps=$R_wraps
            ((k_wraps == 0)) || echo "load.sh: warning: $tag: safe-mode pushes ran out ($k_wraps wraps, raise BODIES)" >&2
            drain
            # Half of kefu's maximum. Each of CONNS connections sends one request per
            # (answer time + delay): a short calibration run at the naive delay measures the
            # answer time at that pace, and the delay is corrected by it.
            target=$(awk -v r="$k_rps" 'BEGIN { printf "%.1f", r / 2 }')
            delay=$(awk -v c="$CONNS" -v t="$target" 'BEGIN { d = c * 1000 / t; printf "%d", (d < 1 ? 1 : d + 0.5) }')
            gen "$mode" "$req"
            DURATION=$CAL_DURATION wrk_run "$tag-kefu-calibrate" "$PORT_KEFU" "$mode" "$req" "$delay"
            delay=$(awk -v c="$CONNS" -v t="$target" -v d="$delay" -v r="$R_rps" \
                'BEGIN { lat = c * 1000 / r - d; n = c * 1000 / t - lat; printf "%d", (n < 1 ? 1 : n + 0.5) }')
            drain
            gen "$mode" "$req"
            wrk_run "$tag-kefu-half" "$PORT_KEFU" "$mode" "$req" "$delay"
            h_rps=$R_rps h_p50=$R_p50_us h_p99=$R_p99_us
            k_non2xx=$((k_non2xx + R_non2xx)) k_wraps=$((k_wraps + R_wraps))
            drain
            wrk_run "$tag-ceiling-half" "$PORT_CEIL" "$mode" "$req" "$delay"
            c_p99=$R_p99_us
            ratio=$(awk -v k="$k_rps" -v c="$c_rps" 'BEGIN { printf "%.0f %%", 100 * k / c }')
            echo "| $mode | $path | $rep | $c_rps | $k_rps | $ratio | $h_rps of $target (delay ${delay} ms) | $(fmt_ms "$h_p50") | $(fmt_ms "$h_p99") | $(fmt_ms "$c_p99") | $k_non2xx | $k_wraps |" |
                tee -a "$SUMMARY"
        done
        drain
        {
            echo "== kefu $mode/$path metrics at the end"
            curl -s "http://127.0.0.1:$PORT_KEFU/metrics" |
                grep -E '^kefu_(pushes|refusals|sends|dropped|outbox_depth)' || true
        } >>"$OUT/metrics.txt"
        snapshot "after $mode/$path"
        stop "$kefu_pid"
        [[ $STATE_BASE == "$OUT" ]] || rm -rf "$state"
    done
done

echo
cat "$SUMMARY"
echo
echo "kefu's own counters: $OUT/metrics.txt; what else ran: $OUT/machine.txt"
