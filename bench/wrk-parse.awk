# Reads the output of `wrk --latency` and prints one line:
#   REQ_PER_SEC P99_MICROSECONDS REQUESTS NON_2XX_3XX SOCKET_ERRORS
# wrk prints latencies with a unit suffix chosen per value ("870.00us",
# "1.23ms", "2.01s", "1.50m", "1.00h"), so the 99% line is normalised to
# microseconds. A field that wrk did not print is "-" (p99, requests/sec) or 0.
function to_us(v,    num, unit) {
    if (!match(v, /^[0-9]+(\.[0-9]+)?/)) return "-"
    num = substr(v, 1, RLENGTH) + 0
    unit = substr(v, RLENGTH + 1)
    if (unit == "us") return num
    if (unit == "ms") return num * 1000
    if (unit == "s")  return num * 1000000
    if (unit == "m")  return num * 60000000
    if (unit == "h")  return num * 3600000000
    return "-"
}
BEGIN { rps = "-"; p99 = "-"; reqs = 0; non2xx = 0; errs = 0; in_dist = 0 }
/^[ \t]*Latency Distribution/ { in_dist = 1; next }
in_dist && /^[ \t]*99(\.0+)?%[ \t]/ { p99 = to_us($2); next }
in_dist && !/^[ \t]*[0-9.]+%[ \t]/ { in_dist = 0 }
/ requests in / { reqs = $1 + 0 }
/Non-2xx or 3xx responses:/ { non2xx = $NF + 0 }
/Socket errors:/ {
    # "Socket errors: connect 0, read 0, write 0, timeout 0"
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) errs += $i + 0
}
/^Requests\/sec:/ { rps = $2 + 0 }
END {
    if (rps != "-") rps = sprintf("%.2f", rps)
    if (p99 != "-") p99 = sprintf("%.1f", p99)
    printf "%s %s %d %d %d\n", rps, p99, reqs, non2xx, errs
}
