#!/bin/bash
# bench/run.sh BUILD_DIR — jobgated against nginx as an HTTPS reverse proxy.
#
# One scenario: 1 KiB responses over keep-alive, 64 connections, wrk with two
# threads, on 127.0.0.1. Both peers proxy to the same app (an nginx serving a
# fixed 1 KiB body on a UNIX socket in a private directory). Runs alternate
# (jobgate, nginx, jobgate, nginx, ...) so that drift of the machine hits both
# peers alike; the report takes the median of each peer's runs.
#
# Environment:
#   BENCH_SECONDS=10      length of one measured run
#   BENCH_ROUNDS=3        measured runs per peer
#   BENCH_WARMUP=2        warm-up seconds per peer before the first round
#   BENCH_CONNECTIONS=64  BENCH_THREADS=2   wrk's -c and -t
#   BENCH_ONLY=nginx|jobgate   run one peer only (e.g. to check the script)
#   BENCH_OUT=DIR         where raw wrk outputs and the summary go
#                         (default: BUILD_DIR/bench)
#
# The benchmark never fails a build because a peer is slow: the exit status is
# non-zero only when the benchmark could not run (a tool is missing, a peer did
# not start, or a peer answered nothing but errors).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
build=$(cd "$build" 2>/dev/null && pwd) || { echo "bench: no build directory '${1:-build}'" >&2; exit 1; }

secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
warmup=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
only=${BENCH_ONLY:-}
out=${BENCH_OUT:-$build/bench}
py=/usr/bin/python3

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

for v in BENCH_SECONDS:secs BENCH_ROUNDS:rounds BENCH_WARMUP:warmup BENCH_CONNECTIONS:conns BENCH_THREADS:threads; do
    var=${v#*:}
    case ${!var} in ''|*[!0-9]*) die "${v%%:*} must be a whole number (got '${!var}')" ;; esac
done
if [ "$secs" -lt 1 ] || [ "$rounds" -lt 1 ]; then die "BENCH_SECONDS and BENCH_ROUNDS must be at least 1"; fi
case $only in
    '') peers="jobgate nginx" ;;
    nginx|jobgate) peers=$only ;;
    *) die "BENCH_ONLY must be nginx or jobgate (got '$only')" ;;
esac

for tool in wrk nginx curl openssl; do
    command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (scripts/install-deps bench installs it)"
done
[ -x "$py" ] || die "$py not found"
case " $peers " in *" jobgate "*)
    [ -x "$build/jobgated" ] || die "$build/jobgated not built"
    [ -x "$build/jobgate" ] || die "$build/jobgate not built" ;;
esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/jobgate-bench.XXXXXX")
chmod 700 "$tmp"
pids=()

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # Keep the daemons' logs for a post-mortem; they are small (no access logs).
    if [ -d "$out" ]; then
        for f in jobgated.log app-error.log proxy-error.log; do
            [ -s "$tmp/$f" ] && tail -n 200 "$tmp/$f" > "$out/$f" 2>/dev/null
        done
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$out" || die "cannot create $out"
rm -f "$out"/*.wrk "$out"/*.res "$out"/*.log "$out/summary.txt"

free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS CMD...: retries CMD until it succeeds.
wait_for() {
    local limit=$(( $1 * 10 ))
    shift
    for _ in $(seq "$limit"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- the app
mkdir -p "$tmp/www" "$tmp/tmp" "$tmp/app"
chmod 700 "$tmp/app"
app_sock=$tmp/app/app.sock
# A 1024-byte HTML body.
{
    printf '<!doctype html><title>jobgate bench</title><pre>\n'
    head -c 2048 /dev/zero | tr '\0' 'x' | fold -w 63
} | head -c 1018 > "$tmp/www/index.html"
printf '</pre>' >> "$tmp/www/index.html"
[ "$(wc -c < "$tmp/www/index.html")" -eq 1024 ] || die "body is not 1 KiB"

# Workers of an nginx started by root switch to 'nobody', which cannot enter
# the private directories; run them as the invoking user instead.
if [ "$(id -u)" -eq 0 ]; then user_line="user root;"; else user_line=""; fi

render() { # TEMPLATE OUTPUT [PORT]
    sed -e "s|@PREFIX@|$tmp|g" -e "s|@APP_SOCK@|$app_sock|g" \
        -e "s|@PORT@|${3:-0}|g" -e "s|@USER@|$user_line|g" "$1" > "$2"
}

render "$here/nginx-app.conf.in" "$tmp/app.conf"
nginx -p "$tmp" -c "$tmp/app.conf" -g 'daemon off;' 2>>"$tmp/app-error.log" &
pids+=("$!")
wait_for 10 curl -sf --unix-socket "$app_sock" http://app/ \
    || { cat "$tmp/app-error.log" >&2; die "the app (nginx on $app_sock) did not start"; }

# ---------------------------------------------------------------- nginx peer
nginx_url=
if [ -z "$only" ] || [ "$only" = nginx ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=bench.localhost -addext "subjectAltName=DNS:*.localhost,DNS:localhost" \
        -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null || die "openssl could not make a certificate"
    nginx_port=$(free_port)
    render "$here/nginx-proxy.conf.in" "$tmp/proxy.conf" "$nginx_port"
    nginx -p "$tmp" -c "$tmp/proxy.conf" -g 'daemon off;' 2>>"$tmp/proxy-error.log" &
    nginx_pid=$!
    pids+=("$nginx_pid")
    nginx_url=https://bench.localhost:$nginx_port/
    wait_for 10 curl -skf --resolve "bench.localhost:$nginx_port:127.0.0.1" "$nginx_url" \
        || { cat "$tmp/proxy-error.log" >&2; die "nginx (TLS proxy on 127.0.0.1:$nginx_port) did not start"; }
fi

# ---------------------------------------------------------------- jobgate peer
jobgate_url=
if [ -z "$only" ] || [ "$only" = jobgate ]; then
    mkdir -p "$tmp/home" "$tmp/state" "$tmp/run"
    chmod 700 "$tmp/home" "$tmp/state" "$tmp/run"
    jg_port=$(free_port)
    jg_env=(HOME="$tmp/home" XDG_STATE_HOME="$tmp/state" XDG_RUNTIME_DIR="$tmp/run")
    ctl_sock=$tmp/run/jobgate/control.sock
    env "${jg_env[@]}" "$build/jobgated" -f -l "127.0.0.1:$jg_port" >"$tmp/jobgated.log" 2>&1 &
    jg_pid=$!
    pids+=("$jg_pid")

    # ctl JSON: one request on the control socket, prints the one-line answer.
    ctl() {
        "$py" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
line = s.makefile("rb").readline()
if not line:
    sys.exit(1)
sys.stdout.write(line.decode())
' "$ctl_sock" "$1"
    }
    ctl_ok() { ctl "$1" | grep -q '"ok": *true'; }
    wait_for 15 ctl_ok '{"op":"hello"}' \
        || { tail -n 30 "$tmp/jobgated.log" >&2; die "jobgated did not answer on $ctl_sock"; }

    answer=$(ctl "{\"op\":\"register\",\"name\":\"bench\",\"socket\":\"$app_sock\"}") \
        || die "no answer to register"
    read -r jg_alias jg_link < <("$py" -c '
import json, sys
a = json.loads(sys.argv[1])
if not a.get("ok"):
    sys.exit("register failed: %s" % sys.argv[1].strip())
print(a["alias"], a["link"])
' "$answer") || die "could not publish the app: $answer"
    jg_host=$jg_alias.localhost
    jobgate_url=https://$jg_host:$jg_port/

    # Redeem the one-time link; the answer sets the session cookie.
    jobgate_cookie=$(curl -sk -o /dev/null -D - --resolve "$jg_host:$jg_port:127.0.0.1" "$jg_link" \
        | tr -d '\r' | sed -n 's/^[Ss][Ee][Tt]-[Cc][Oo][Oo][Kk][Ii][Ee]: *\(__Host-jobgate=[^;]*\).*/\1/p' | head -n 1)
    [ -n "$jobgate_cookie" ] || die "redeeming $jg_link gave no __Host-jobgate cookie"
    body=$(curl -sk --resolve "$jg_host:$jg_port:127.0.0.1" -H "Cookie: $jobgate_cookie" "$jobgate_url") \
        || die "GET $jobgate_url through jobgated failed"
    [ "$body" = "$(cat "$tmp/www/index.html")" ] || die "jobgated did not return the app's body"
fi

# ---------------------------------------------------------------- runs
# run_wrk PEER SECONDS OUTFILE
run_wrk() {
    local peer=$1 d=$2 file=$3 url cookie
    if [ "$peer" = jobgate ]; then url=$jobgate_url; cookie=$jobgate_cookie
    else url=$nginx_url; cookie=; fi
    local args=(-t"$threads" -c"$conns" -d"${d}s" --latency -s "$here/localhost.lua")
    [ -n "$cookie" ] && args+=(-H "Cookie: $cookie")
    wrk "${args[@]}" "$url" > "$file" 2>&1 || true
}

# check_run PEER FILE: 0 if the run measured something; warns about errors.
check_run() {
    local rps p99 reqs non2xx errs
    read -r rps p99 reqs non2xx errs < <(awk -f "$here/wrk-parse.awk" "$2")
    if [ "$rps" = - ] || [ "$p99" = - ] || [ "$reqs" -eq 0 ]; then
        log "$1: wrk measured nothing:"; sed 's/^/    /' "$2" >&2; return 1
    fi
    if [ "$non2xx" -gt 0 ] || [ "$errs" -gt 0 ]; then
        log "$1: warning: $non2xx non-2xx/3xx responses and $errs socket errors in $reqs requests"
        [ "$non2xx" -lt "$reqs" ] || { log "$1: every response was an error"; return 1; }
    fi
    return 0
}

log "machine: $(nproc) CPUs, $(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -n 1), $(uname -sr)"
log "scenario: 1 KiB responses, keep-alive, wrk -t$threads -c$conns, ${secs}s x $rounds rounds per peer, warm-up ${warmup}s"
[ -n "$jobgate_url" ] && log "jobgate: $jobgate_url (jobgated pid $jg_pid)"
[ -n "$nginx_url" ] && log "nginx:   $nginx_url"

# A peer's process tree: jobgated, or nginx's master and its workers.
tree() {
    local q
    for q in "$@"; do echo "$q"; cat "/proc/$q/task/$q/children" 2>/dev/null; done
}
peer_pid() { if [ "$1" = jobgate ]; then echo "$jg_pid"; else echo "$nginx_pid"; fi; }

# CPU time (user + system, all threads) used so far by a process tree, in clock ticks.
cpu_ticks() {
    local total=0 p t
    for p in $(tree "$@"); do
        # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        total=$(( total + ${t:-0} ))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Peak resident memory (VmHWM) of a process tree, in KiB.
hwm_kb() {
    local total=0 p kb
    for p in $(tree "$@"); do
        kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        total=$(( total + ${kb:-0} ))
    done
    echo "$total"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(loadavg)

for peer in $peers; do
    if [ "$warmup" -gt 0 ]; then
        log "warm-up $peer (${warmup}s)"
        run_wrk "$peer" "$warmup" "$out/warmup-$peer.wrk"
        check_run "$peer" "$out/warmup-$peer.wrk" || die "$peer failed its warm-up"
    fi
done

# Per run: "REQ_PER_SEC P99_US CPU_US_PER_REQUEST" in PEER-N.res
for r in $(seq "$rounds"); do
    for peer in $peers; do
        f=$out/$peer-$r.wrk
        pid=$(peer_pid "$peer")
        t0=$(cpu_ticks "$pid")
        run_wrk "$peer" "$secs" "$f"
        t1=$(cpu_ticks "$pid")
        check_run "$peer" "$f" || die "$peer failed in round $r"
        read -r rps p99 reqs _ < <(awk -f "$here/wrk-parse.awk" "$f")
        cpu=$(awk -v d=$(( t1 - t0 )) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
        echo "$rps $p99 $cpu" > "$out/$peer-$r.res"
        log "round $r $peer: $rps req/s, p99 $(awk -v u="$p99" 'BEGIN { printf "%.2f ms", u / 1000 }'), $cpu us CPU per request"
    done
done
load_after=$(loadavg)

# ---------------------------------------------------------------- report
declare -A med_rps med_p99 med_cpu rss
col() { for r in $(seq "$rounds"); do cut -d' ' -f"$2" "$out/$1-$r.res"; done; }
for peer in $peers; do
    med_rps[$peer]=$(col "$peer" 1 | median)
    med_p99[$peer]=$(col "$peer" 2 | median)
    med_cpu[$peer]=$(col "$peer" 3 | median)
    rss[$peer]=$(hwm_kb "$(peer_pid "$peer")")
done

{
    echo "jobgate benchmark: 1 KiB responses over keep-alive, wrk -t$threads -c$conns --latency,"
    echo "$rounds alternating runs of ${secs}s per peer, medians; $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -n 1), $(uname -sr); $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    echo "load average before: $load_before, after: $load_after"
    echo
    printf '%-8s %9s %9s %12s %15s   %s\n' peer "req/s" "p99 ms" "CPU us/req" "peak RSS KiB" "runs (req/s)"
    for peer in $peers; do
        printf '%-8s %9.0f %9.2f %12.1f %15s   %s\n' "$peer" "${med_rps[$peer]}" \
            "$(awk -v u="${med_p99[$peer]}" 'BEGIN { print u / 1000 }')" "${med_cpu[$peer]}" \
            "${rss[$peer]}" "$(col "$peer" 1 | tr '\n' ' ')"
    done
    if [ -z "$only" ]; then
        echo
        awk -v a="${med_rps[jobgate]}" -v b="${med_rps[nginx]}" -v c="${med_p99[jobgate]}" -v d="${med_p99[nginx]}" \
            -v e="${med_cpu[jobgate]}" -v f="${med_cpu[nginx]}" \
            'BEGIN { printf "jobgate/nginx: req/s %.2f, p99 %.2f, CPU per request %.2f\n", a / b, c / d, (f > 0 ? e / f : 0) }'
        echo "(req/s: higher is better; p99 and CPU per request: lower is better)"
        echo "jobgated peak RSS (VmHWM): ${rss[jobgate]} KiB; nginx (master + workers): ${rss[nginx]} KiB"
    fi
} | tee "$out/summary.txt"
log "raw wrk outputs and this summary are in $out"
