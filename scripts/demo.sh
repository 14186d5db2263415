#!/bin/bash
# scripts/demo.sh BUILD_DIR — what `make demo` runs.
#
# Starts a personal gateway (your real default state: no configuration, listening
# on 127.0.0.1:8443, state in ${XDG_STATE_HOME:-~/.local/state}/jobgate), or reuses
# the one that already answers on the control socket, then runs the demo app
# behind it in the foreground with `jobgate run`, which prints the link.
# Ctrl-C stops the app and, if this script started it, the gateway.
set -uo pipefail

build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3

die() { echo "demo: $*" >&2; exit 1; }

build=$(cd "$build" 2>/dev/null && pwd) || die "no build directory '${1:-build}' (run make first)"
if [ ! -x "$build/jobgated" ] || [ ! -x "$build/jobgate" ]; then die "$build/jobgated or $build/jobgate is missing (run make)"; fi
[ -x "$py" ] || die "$py is missing"

# The same places that jobgated and jobgate use without options (src/lib/config.h).
if [ -n "${XDG_STATE_HOME:-}" ]; then
    state=$XDG_STATE_HOME/jobgate
elif [ -n "${HOME:-}" ]; then
    state=$HOME/.local/state/jobgate
else
    die "neither XDG_STATE_HOME nor HOME is set"
fi
if [ -n "${XDG_RUNTIME_DIR:-}" ] && [ -d "$XDG_RUNTIME_DIR" ]; then
    ctl_sock=$XDG_RUNTIME_DIR/jobgate/control.sock
else
    ctl_sock=$state/control.sock
fi
gw_log=$state/demo-gateway.log

# hello: asks the gateway on the control socket; prints its answer line.
hello() {
    [ -S "$ctl_sock" ] || return 1
    "$py" - "$ctl_sock" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
try:
    s.connect(sys.argv[1])
    s.sendall(b'{"op":"hello"}\n')
    line = s.makefile("rb").readline()
    answer = json.loads(line)
except (OSError, ValueError):
    sys.exit(1)
if answer.get("ok") is not True:
    sys.exit(1)
sys.stdout.write(line.decode())
EOF
}

gw_pid=
# shellcheck disable=SC2317  # called from the EXIT trap
stop_gateway() {
    [ -n "$gw_pid" ] || return 0
    if kill -0 "$gw_pid" 2>/dev/null; then
        echo "demo: stopping the gateway (pid $gw_pid)" >&2
        kill -TERM "$gw_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$gw_pid" 2>/dev/null
    fi
    wait "$gw_pid" 2>/dev/null
    gw_pid=
}
trap stop_gateway EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if answer=$(hello); then
    echo "demo: using the gateway that already runs (control socket $ctl_sock)" >&2
else
    (umask 077 && mkdir -p "$state") || die "cannot create $state"
    printf '\n--- make demo, %s ---\n' "$(date '+%Y-%m-%d %H:%M:%S')" >> "$gw_log" || die "cannot write $gw_log"
    log_from=$(( $(wc -l < "$gw_log") + 1 ))
    # In its own session, so that Ctrl-C reaches the app first and the gateway is
    # stopped by this script afterwards, in order.
    setsid "$build/jobgated" -f >> "$gw_log" 2>&1 < /dev/null &
    gw_pid=$!
    echo "demo: started a personal gateway (pid $gw_pid, log $gw_log)" >&2
    answer=
    for _ in $(seq 150); do
        answer=$(hello) && break
        kill -0 "$gw_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$answer" ]; then
        echo "demo: the gateway did not come up; from $gw_log:" >&2
        tail -n +"$log_from" "$gw_log" | tail -n 20 | sed 's/^/    /' >&2
        exit 1
    fi
fi

port=$("$py" -c 'import json, sys; s = json.loads(sys.argv[1]).get("url_suffix", ""); print(s.rsplit(":", 1)[1] if ":" in s else "443")' "$answer" 2>/dev/null)
port=${port:-8443}

cat >&2 <<EOF

demo: Open the one-time link printed below in a browser on this machine and accept
demo: the self-signed certificate warning; the link works once and then a cookie
demo: keeps you in. On another machine, forward the port first:
demo:     ssh -L $port:127.0.0.1:$port $(hostname)
demo: Press Ctrl-C here to stop.

EOF

# Ctrl-C is the normal way to end the demo: jobgate run passes it to the app and
# returns; then the EXIT trap stops the gateway and the script ends with status 0.
interrupted=
trap 'interrupted=1' INT
"$build/jobgate" run -n demo -- "$py" "$root/contrib/demo/app.py" --sock '{socket}'
status=$?
if [ -n "$interrupted" ]; then
    echo "demo: stopped" >&2
    exit 0
fi
echo "demo: the app exited (status $status)" >&2
exit "$status"
