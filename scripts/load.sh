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
#   SCENARIO=accounts REPEAT=8 scripts/load.sh   # one account against two sharing the load
#
# SCENARIO=accounts (issue 20, "several accounts") measures instead, in the same run, kefu
# with one account ([accounts.a] at /wechat/a) and kefu with ACCOUNTS accounts ([accounts.a],
# [accounts.b], … at /wechat/a, /wechat/b, …, each with its own token, AppID and store, all
# against the mock), both alive side by side, in alternating order. Plaintext pushes only; the
# same CONNS and THREADS for both: wrk's thread i pushes to account ((i - 1) mod ACCOUNTS) + 1,
# so THREADS must be a multiple of ACCOUNTS and the load is split evenly. Each wrk thread has
# its own OPENIDS / THREADS followers in both configurations, so the pushes differ only in
# where they go. It reports each configuration's maximum req/s and their ratio (several / one),
# kefu's CPU time per push at full speed (from /proc/PID/stat), and the p50/p99 of each paced
# to half of the one-account maximum of the same repetition.
#
# Knobs (environment): DURATION (10s), CONNS (32), THREADS (2), REPEAT (2), MODES ("plain safe"),
# PATHS ("passive send": passive_first true / false), BODIES (safe-mode pushes generated per
# run, 400000), CAL_DURATION (3s, the pacing calibration run), OPENIDS (20000 simulated
# followers), RUST_LOG (info, kefu's default), NO_BUILD=1, SEND_DELAY_MS (0: latency of the
# mock's custom/send), OUT (results directory), STATE_BASE (where kefu's state dirs go, default
# OUT; /dev/shm shows what the fsyncs cost), SYNC (state.sync: full, the default, or normal),
# PORT_MOCK/PORT_CEIL/PORT_KEFU (9310/9311/9312), SCENARIO (ceiling, the default: kefu against
# the ceiling for MODES x PATHS; or accounts, see above: plaintext only, PATHS defaults to
# passive there), ACCOUNTS (2, at most 8), PORT_KEFU2 (9313, the several-account kefu), PIN=1
# (taskset: the servers and the mock on CPU 0, wrk on CPU 1; default: no pinning, everything
# shares every CPU).
# Needs wrk (Debian: apt-get install wrk) and curl.
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-2}
SCENARIO=${SCENARIO:-ceiling}
ACCOUNTS=${ACCOUNTS:-2}
if [[ $SCENARIO == accounts ]]; then
    [[ ${MODES:-plain} == plain ]] || { echo "load.sh: SCENARIO=accounts runs plaintext pushes only (MODES=plain)" >&2; exit 1; }
    MODES=plain
    PATHS=${PATHS:-passive}
fi
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
PORT_KEFU2=${PORT_KEFU2:-9313}
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
case $SCENARIO in
    ceiling) ;;
    accounts)
        ((ACCOUNTS >= 1 && ACCOUNTS <= 8)) || die "ACCOUNTS must be 1 to 8, not $ACCOUNTS"
        ((THREADS % ACCOUNTS == 0)) ||
            die "THREADS ($THREADS) must be a multiple of ACCOUNTS ($ACCOUNTS) to split the load evenly"
        ;;
    *) die "SCENARIO must be ceiling or accounts, not $SCENARIO" ;;
esac
SRV_PIN=() WRK_PIN=()
if [[ -n ${PIN:-} ]]; then
    command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
    (($(nproc) >= 2)) || die "PIN=1 needs 2 CPUs, this machine has $(nproc)"
    SRV_PIN=(taskset -c 0) WRK_PIN=(taskset -c 1)
fi

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
    "${SRV_PIN[@]}" "$@" >"$OUT/$name.log" 2>&1 &
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
# MODE accounts: plaintext pushes, REQFILE is push_plain.lua's PATH=REQFILE,… list.
wrk_run() {
    local label=$1 port=$2 mode=$3 req=$4 delay=$5 args script=$3
    case $mode in
        plain) args=("$req" "$OPENIDS") ;;
        accounts) args=("$req" "$OPENIDS" "$THREADS") script=plain ;;
        *) args=("$req" "$THREADS") ;;
    esac
    PUSH_DELAY_MS=$delay "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency \
        -s "$ROOT/scripts/push_$script.lua" "http://127.0.0.1:$port/wechat" -- "${args[@]}" \
        >"$OUT/$label.txt" 2>&1 || die "wrk failed, see $OUT/$label.txt"
    local line
    line=$(sed -n 's/^RESULT //p' "$OUT/$label.txt")
    [[ -n $line ]] || die "no RESULT line in $OUT/$label.txt"
    for kv in $line; do
        printf -v "R_${kv%%=*}" '%s' "${kv#*=}"
    done
}

metric() { # metric REGEX [PORT] : the sum of the kefu metric lines matching REGEX
    curl -s "http://127.0.0.1:${2:-$PORT_KEFU}/metrics" |
        awk -v re="$1" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d", s }'
}

drain() { # drain [PORT] : let the sender finish the previous run's sends, at most 60 s
    for _ in $(seq 120); do
        [[ $(metric '^kefu_outbox_depth' "${1:-$PORT_KEFU}") == 0 ]] && return 0
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

# rules_state_cfg STATE PASSIVE : the [rules] and [state] sections every kefu here runs with.
rules_state_cfg() {
    cat <<EOC
[rules]
dir = "$ROOT/scripts/load-rules"
hot_reload = false
passive_first = $2
[state]
dir = "$1"
sync = "$SYNC"
EOC
}

# --- SCENARIO=accounts: one account against ACCOUNTS accounts sharing the same load ---------

ACC_NAMES=(a b c d e f g h)
acc_token() { echo "loadtok$1"; }                  # acc_token NAME
acc_app_id() { printf 'wxload%012d' "$1"; }         # acc_app_id K (1-based)

# accounts_cfg FILE PORT STATE PASSIVE N : a kefu config with accounts a, b, … (N of them).
accounts_cfg() {
    local file=$1 port=$2 state=$3 passive=$4 n=$5 k name
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\n' "$port"
        rules_state_cfg "$state" "$passive"
        for ((k = 1; k <= n; k++)); do
            name=${ACC_NAMES[k - 1]}
            cat <<EOC
[accounts.$name]
path = "/wechat/$name"
token = "$(acc_token "$name")"
encoding_aes_key = "$AES_KEY"
app_id = "$(acc_app_id "$k")"
app_secret = "load-test-secret-$name"
api_base = "http://127.0.0.1:$PORT_MOCK"
EOC
        done
    } >"$file"
}

acc_gen() { # acc_gen NAME FILE : the signed plaintext query for account NAME
    "$BIN/examples/load_requests" --mode plain --out "$2" --count 1 --token "$(acc_token "$1")"
}

# acc_spec N TAG : signs a query for each of accounts 1..N now; prints push_plain.lua's list.
acc_spec() {
    local n=$1 tag=$2 k name spec=""
    for ((k = 1; k <= n; k++)); do
        name=${ACC_NAMES[k - 1]}
        acc_gen "$name" "$OUT/$tag-$name.req"
        spec+="${spec:+,}/wechat/$name=$OUT/$tag-$name.req"
    done
    echo "$spec"
}

# acc_check PORT NAME SIGNED_FOR PATH : one plaintext push by curl to /wechat/NAME, signed with
# SIGNED_FOR's token: the passive reply (or `success` on the send path) when they are the same
# account, 401 when not.
acc_check() {
    local port=$1 name=$2 signer=$3 path=$4 req="$OUT/check-$3.req" query ts body answer
    acc_gen "$signer" "$req"
    query=$(head -1 "$req")
    ts=$(sed 's/.*timestamp=\([0-9]*\).*/\1/' <<<"$query")
    body="<xml><ToUserName><![CDATA[gh_loadtest00001]]></ToUserName><FromUserName><![CDATA[oLoadcheck]]></FromUserName><CreateTime>$ts</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[price?]]></Content><MsgId>1$RANDOM$RANDOM</MsgId></xml>"
    answer=$(curl -s -w ' HTTP%{http_code}' -H 'Content-Type: text/xml' --data-binary "$body" \
        "http://127.0.0.1:$port/wechat/$name?$query")
    echo "check accounts/$path on :$port /wechat/$name signed for $signer: $answer" >>"$OUT/checks.txt"
    if [[ $name != "$signer" ]]; then
        [[ $answer == *HTTP401 ]] || die "a push signed for $signer was not refused on /wechat/$name: $answer"
        return 0
    fi
    case "$path/$answer" in
        passive/*"Our prices are on the website"*HTTP200) ;;
        send/"success HTTP200") ;;
        *) die "unexpected answer on /wechat/$name ($path): $answer" ;;
    esac
}

acc_pushes() { # acc_pushes PORT NAME : account NAME's fresh pushes so far
    metric "^kefu_pushes_total[{]account=\"$2\",.*outcome=\"fresh\"" "$1"
}

write_bytes() { # write_bytes PID : bytes process PID caused to be written to storage so far
    awk '/^write_bytes:/ { print $2 }' "/proc/$1/io"
}

fresh_pushes() { # fresh_pushes PORT : a single-account kefu's fresh pushes so far
    metric '^kefu_pushes_total[{].*outcome="fresh"' "$1"
}

cpu_ticks() { # cpu_ticks PID : the user + system CPU time of process PID so far, in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# acc_max TAG PORT N PID : one full-speed run against the kefu (PID) of N accounts on PORT;
# sets M_rps, M_non2xx, M_split (each account's fresh pushes during the run, "a / b / …") and
# M_cpu (kefu's CPU time per fresh push, µs: robust to the machine's other load, unlike req/s).
acc_max() {
    local tag=$1 port=$2 n=$3 pid=$4 k before=() spec ticks total=0 d
    for ((k = 0; k < n; k++)); do before+=("$(acc_pushes "$port" "${ACC_NAMES[k]}")"); done
    spec=$(acc_spec "$n" "$tag")
    ticks=$(cpu_ticks "$pid")
    wrk_run "$tag-max" "$port" accounts "$spec" 0
    ticks=$(($(cpu_ticks "$pid") - ticks))
    M_rps=$R_rps M_non2xx=$((R_non2xx + R_sock_errors)) M_split=""
    for ((k = 0; k < n; k++)); do
        d=$(($(acc_pushes "$port" "${ACC_NAMES[k]}") - before[k]))
        M_split+="${M_split:+ / }$d"
        total=$((total + d))
    done
    M_cpu=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$total" \
        'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
}

# acc_half TAG PORT N TARGET : the kefu of N accounts paced to TARGET req/s (calibrated as in
# the ceiling scenario); sets H_rps, H_p50, H_p99 (µs) and H_non2xx.
acc_half() {
    local tag=$1 port=$2 n=$3 target=$4 delay spec
    delay=$(awk -v c="$CONNS" -v t="$target" 'BEGIN { d = c * 1000 / t; printf "%d", (d < 1 ? 1 : d + 0.5) }')
    spec=$(acc_spec "$n" "$tag")
    DURATION=$CAL_DURATION wrk_run "$tag-calibrate" "$port" accounts "$spec" "$delay"
    delay=$(awk -v c="$CONNS" -v t="$target" -v d="$delay" -v r="$R_rps" \
        'BEGIN { lat = c * 1000 / r - d; n = c * 1000 / t - lat; printf "%d", (n < 1 ? 1 : n + 0.5) }')
    drain "$port"
    spec=$(acc_spec "$n" "$tag")
    wrk_run "$tag-half" "$port" accounts "$spec" "$delay"
    H_rps=$R_rps H_p50=$R_p50_us H_p99=$R_p99_us
    H_non2xx=$((R_non2xx + R_sock_errors))
}

stats() { # stats FORMAT VALUE… : "min / median / max" of the values, each printed with FORMAT
    local f=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v f="$f" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf f " / " f " / " f, v[1], m, v[NR] }'
}

median() { stats %.3f "$@" | awk -F' / ' '{ print $2 }'; } # median VALUE…

accounts_scenario() {
    local path passive n=$ACCOUNTS rep one two ratios ones twos p99s1 p99s2 first cpu1 cpun
    {
        echo "SCENARIO=accounts: one account against $n; wrk -t$THREADS -c$CONNS -d$DURATION (the same for both, thread i to account ((i-1) mod $n)+1); RUST_LOG=$RUST_LOG; $OPENIDS followers ($((OPENIDS / THREADS)) per wrk thread); state in $STATE_BASE (state.sync = $SYNC); pinning: $(if [[ -n ${PIN:-} ]]; then echo "servers CPU 0, wrk CPU 1"; else echo none; fi); $(nproc) CPUs; fsync probe: $FSYNC"
        echo
        echo "| reply | rep | first | 1 account req/s | $n accounts req/s | $n/1 | pushes per account ($n) | kefu CPU µs per push: 1 / $n | half pace target req/s | 1 account: achieved, p50 / p99 ms | $n accounts: achieved, p50 / p99 ms | non-2xx |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    } >"$SUMMARY"
    snapshot start
    for path in $PATHS; do
        passive=true
        [[ $path == send ]] && passive=false
        local s1="$STATE_BASE/state-accounts1-$path-$$" sn="$STATE_BASE/state-accounts$n-$path-$$"
        accounts_cfg "$OUT/kefu-accounts1-$path.toml" "$PORT_KEFU" "$s1" "$passive" 1
        accounts_cfg "$OUT/kefu-accounts$n-$path.toml" "$PORT_KEFU2" "$sn" "$passive" "$n"
        start "kefu-accounts1-$path" "$BIN/kefu" serve --config "$OUT/kefu-accounts1-$path.toml"
        local pid1=$LAST_PID
        start "kefu-accounts$n-$path" "$BIN/kefu" serve --config "$OUT/kefu-accounts$n-$path.toml"
        local pidn=$LAST_PID
        wait_up "http://127.0.0.1:$PORT_KEFU/healthz"
        wait_up "http://127.0.0.1:$PORT_KEFU2/healthz"
        acc_check "$PORT_KEFU" a a "$path"
        local k
        for ((k = 0; k < n; k++)); do acc_check "$PORT_KEFU2" "${ACC_NAMES[k]}" "${ACC_NAMES[k]}" "$path"; done
        ((n < 2)) || acc_check "$PORT_KEFU2" b a "$path"
        drain "$PORT_KEFU"
        drain "$PORT_KEFU2"
        ones=() twos=() ratios=() p99s1=() p99s2=() cpu1=() cpun=()
        for rep in $(seq "$REPEAT"); do
            tag="accounts-$path-$rep"
            # Alternate who goes first so a drift in the machine's load favours neither.
            if ((rep % 2)); then
                first=1
                acc_max "$tag-one" "$PORT_KEFU" 1 "$pid1"
                one=("$M_rps" "$M_non2xx" "$M_cpu")
                drain "$PORT_KEFU"
                acc_max "$tag-several" "$PORT_KEFU2" "$n" "$pidn"
                two=("$M_rps" "$M_non2xx" "$M_split" "$M_cpu")
            else
                first=$n
                acc_max "$tag-several" "$PORT_KEFU2" "$n" "$pidn"
                two=("$M_rps" "$M_non2xx" "$M_split" "$M_cpu")
                drain "$PORT_KEFU2"
                acc_max "$tag-one" "$PORT_KEFU" 1 "$pid1"
                one=("$M_rps" "$M_non2xx" "$M_cpu")
            fi
            drain "$PORT_KEFU"
            drain "$PORT_KEFU2"
            # Both paced to half of the one-account maximum: the same offered load.
            target=$(awk -v r="${one[0]}" 'BEGIN { printf "%.1f", r / 2 }')
            if ((rep % 2)); then
                acc_half "$tag-one" "$PORT_KEFU" 1 "$target"
                h1=("$H_rps" "$H_p50" "$H_p99" "$H_non2xx")
                drain "$PORT_KEFU"
                acc_half "$tag-several" "$PORT_KEFU2" "$n" "$target"
                hn=("$H_rps" "$H_p50" "$H_p99" "$H_non2xx")
            else
                acc_half "$tag-several" "$PORT_KEFU2" "$n" "$target"
                hn=("$H_rps" "$H_p50" "$H_p99" "$H_non2xx")
                drain "$PORT_KEFU2"
                acc_half "$tag-one" "$PORT_KEFU" 1 "$target"
                h1=("$H_rps" "$H_p50" "$H_p99" "$H_non2xx")
            fi
            drain "$PORT_KEFU"
            drain "$PORT_KEFU2"
            ratio=$(awk -v a="${one[0]}" -v b="${two[0]}" 'BEGIN { printf "%.3f", b / a }')
            ones+=("${one[0]}") twos+=("${two[0]}") ratios+=("$ratio") cpu1+=("${one[2]}") cpun+=("${two[3]}")
            p99s1+=("$(fmt_ms "${h1[2]}")") p99s2+=("$(fmt_ms "${hn[2]}")")
            echo "| $path | $rep | $first | ${one[0]} | ${two[0]} | $ratio | ${two[2]} | ${one[2]} / ${two[3]} | $target | ${h1[0]}, $(fmt_ms "${h1[1]}") / $(fmt_ms "${h1[2]}") | ${hn[0]}, $(fmt_ms "${hn[1]}") / $(fmt_ms "${hn[2]}") | $((one[1] + two[1] + h1[3] + hn[3])) |" |
                tee -a "$SUMMARY"
        done
        {
            echo
            echo "$path, min / median / max over $REPEAT repetitions:"
            echo "- 1 account req/s: $(stats %.1f "${ones[@]}")"
            echo "- $n accounts req/s: $(stats %.1f "${twos[@]}")"
            echo "- ratio $n/1 per repetition: $(stats %.3f "${ratios[@]}")"
            echo "- ratio of the medians: $(awk -v a="$(median "${ones[@]}")" -v b="$(median "${twos[@]}")" \
                'BEGIN { printf "%.3f", b / a }')"
            echo "- kefu CPU µs per push at full speed, 1 account: $(stats %.1f "${cpu1[@]}"); $n accounts: $(stats %.1f "${cpun[@]}")"
            echo "- p99 ms at half pace, 1 account: $(stats %.2f "${p99s1[@]}"); $n accounts: $(stats %.2f "${p99s2[@]}")"
            echo
        } | tee -a "$SUMMARY"
        {
            echo "== kefu accounts1/$path metrics at the end"
            curl -s "http://127.0.0.1:$PORT_KEFU/metrics" |
                grep -E '^kefu_(pushes|refusals|sends|dropped|outbox_depth)' || true
            echo "== kefu accounts$n/$path metrics at the end"
            curl -s "http://127.0.0.1:$PORT_KEFU2/metrics" |
                grep -E '^kefu_(pushes|refusals|sends|dropped|outbox_depth)' || true
        } >>"$OUT/metrics.txt"
        snapshot "after accounts/$path"
        stop "$pid1"
        stop "$pidn"
        [[ $STATE_BASE == "$OUT" ]] || rm -rf "$s1" "$sn"
    done
}

start mock "$BIN/examples/mock_wechat" --port "$PORT_MOCK" --send-delay-ms "$SEND_DELAY_MS"
[[ $SCENARIO == accounts ]] || start ceiling "$BIN/examples/ceiling" --port "$PORT_CEIL"
wait_up "http://127.0.0.1:$PORT_MOCK/"
[[ $SCENARIO == accounts ]] || wait_up "http://127.0.0.1:$PORT_CEIL/"

FSYNC=$(fsync_probe)
SUMMARY="$OUT/summary.md"
if [[ $SCENARIO == accounts ]]; then
    accounts_scenario
    echo
    cat "$SUMMARY"
    echo
    echo "kefu's own counters: $OUT/metrics.txt; what else ran: $OUT/machine.txt"
    exit 0
fi
{
    echo "wrk -t$THREADS -c$CONNS -d$DURATION; RUST_LOG=$RUST_LOG; $OPENIDS followers; state in $STATE_BASE (state.sync = $SYNC); mock send delay ${SEND_DELAY_MS} ms; $(nproc) CPUs; fsync probe: $FSYNC"
    echo
    echo "| mode | reply | rep | ceiling req/s | kefu req/s | kefu/ceiling | half pace req/s: achieved of target | kefu p50 ms | kefu p99 ms | ceiling p99 ms at same pace | kefu non-2xx | wraps | bytes written per push | CPU µs per push |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$SUMMARY"

# kefu_max TAG MODE REQ : kefu's full-speed run; besides wrk's R_* sets K_bytes (bytes kefu
# caused to be written to storage per fresh push, /proc/PID/io write_bytes: the journal, the
# SQLite view and its checkpoints) and K_cpu (kefu's CPU µs per fresh push, /proc/PID/stat).
kefu_max() {
    local b0 t0 p0 p1
    b0=$(write_bytes "$kefu_pid") t0=$(cpu_ticks "$kefu_pid") p0=$(fresh_pushes "$PORT_KEFU")
    wrk_run "$1-kefu-max" "$PORT_KEFU" "$2" "$3" 0
    # Writeback of what the run dirtied is charged when it happens: give the view's last
    # commit and checkpoint (each at most a second apart) time to land.
    sleep 2
    p1=$(fresh_pushes "$PORT_KEFU")
    K_bytes=$(awk -v a="$b0" -v b="$(write_bytes "$kefu_pid")" -v n="$((p1 - p0))" 'BEGIN { printf "%.0f", (n > 0 ? (b - a) / n : 0) }')
    K_cpu=$(awk -v a="$t0" -v b="$(cpu_ticks "$kefu_pid")" -v n="$((p1 - p0))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) * 1e6 / hz / n : 0) }')
}

snapshot start
for mode in $MODES; do
    for path in $PATHS; do
        passive=true
        [[ $path == send ]] && passive=false
        state="$STATE_BASE/state-$mode-$path-$$"
        cfg="$OUT/kefu-$mode-$path.toml"
        {
            cat <<EOF
[server]
listen = "127.0.0.1:$PORT_KEFU"
path = "/wechat"
[wechat]
app_id = "$APP_ID"
app_secret = "load-test-secret"
token = "$TOKEN"
encoding_aes_key = "$AES_KEY"
api_base = "http://127.0.0.1:$PORT_MOCK"
EOF
            rules_state_cfg "$state" "$passive"
        } >"$cfg"
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
                kefu_max "$tag" "$mode" "$req"
            else
                kefu_max "$tag" "$mode" "$req"
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
            echo "| $mode | $path | $rep | $c_rps | $k_rps | $ratio | $h_rps of $target (delay ${delay} ms) | $(fmt_ms "$h_p50") | $(fmt_ms "$h_p99") | $(fmt_ms "$c_p99") | $k_non2xx | $k_wraps | $K_bytes | $K_cpu |" |
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
