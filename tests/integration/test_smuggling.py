"""Malformed and ambiguous requests: each gets its status and then the connection is closed.

Every request carries a valid Host and session cookie, so that the answer comes from the
HTTP parser and not from routing or authentication.
"""
import socket
import time

import pytest

from conftest import COOKIE, Closed

CLOSE_WITHIN = 2.0


def H(client):
    return f"Host: {client.host}\r\nCookie: {COOKIE}={client.cookie}\r\n"


def shapes(client):
    h = H(client)
    ck = f"Cookie: {COOKIE}={client.cookie}\r\n"
    host_only = f"Host: {client.host}\r\n"
    many = "".join(f"X-F{i}: {i}\r\n" for i in range(150))
    big = "".join(f"X-Big{i}: {'b' * 1000}\r\n" for i in range(34))  # ~34 KiB, < 100 fields
    return {
        "cl_and_te": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: 5\r\n"
                           f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "te_and_cl": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n"
                           f"Content-Length: 5\r\n\r\n0\r\n\r\n"),
        "two_differing_cl": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: 5\r\n"
                                  f"Content-Length: 6\r\n\r\nhello!"),
        "cl_list_differing": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: 5, 6\r\n\r\nhello!"),
        "cl_negative": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n"),
        "cl_plus": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
        "cl_hex": (400, f"POST /sink HTTP/1.1\r\n{h}Content-Length: 0x5\r\n\r\nhello"),
        "cl_overflow": (400, f"POST /sink HTTP/1.1\r\n{h}"
                             f"Content-Length: 99999999999999999999999999\r\n\r\nhello"),
        "te_chunked_twice": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked"
                                  f"\r\n\r\n0\r\n\r\n"),
        "te_chunked_two_fields": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n"
                                       f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "te_space_before_colon": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding : chunked"
                                       f"\r\n\r\n0\r\n\r\n"),
        "te_in_http10": (400, f"POST /sink HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                              f"0\r\n\r\n"),
        "obs_fold": (400, f"GET /hello HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n"),
        "obs_fold_tab": (400, f"GET /hello HTTP/1.1\r\n{h}X-Folded: a\r\n\tb\r\n\r\n"),
        "bare_lf_everywhere": (400, f"GET /hello HTTP/1.1\n{h.replace(chr(13), '')}\n"),
        "bare_lf_one_line": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: 1\nX-B: 2\r\n\r\n"),
        "bare_lf_request_line": (400, f"GET /hello HTTP/1.1\n{h}\r\n"),
        "bare_cr": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: 1\rX-B: 2\r\n\r\n"),
        "nul_in_value": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: a\x00b\r\n\r\n"),
        "ctl_in_value": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: a\x01b\r\n\r\n"),
        "del_in_value": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: a\x7fb\r\n\r\n"),
        "esc_in_value": (400, f"GET /hello HTTP/1.1\r\n{h}X-A: a\x1b[31mb\r\n\r\n"),
        "bad_method_char": (400, f"G@T /hello HTTP/1.1\r\n{h}\r\n"),
        "bad_method_paren": (400, f"GE(T /hello HTTP/1.1\r\n{h}\r\n"),
        "bad_field_name_char": (400, f"GET /hello HTTP/1.1\r\n{h}X-B(d: 1\r\n\r\n"),
        "space_in_field_name": (400, f"GET /hello HTTP/1.1\r\n{h}X Bad: 1\r\n\r\n"),
        "empty_field_name": (400, f"GET /hello HTTP/1.1\r\n{h}: novalue\r\n\r\n"),
        "leading_space_first_field": (400, f"GET /hello HTTP/1.1\r\n X-A: 1\r\n{h}\r\n"),
        "no_colon": (400, f"GET /hello HTTP/1.1\r\n{h}NoColonHere\r\n\r\n"),
        "request_line_extra_space": (400, f"GET  /hello HTTP/1.1\r\n{h}\r\n"),
        "request_line_two_parts": (400, f"GET /hello\r\n{h}\r\n"),
        "target_with_space": (400, f"GET /he llo HTTP/1.1\r\n{h}\r\n"),
        "http2_request_line": (505, f"GET /hello HTTP/2.0\r\n{h}\r\n"),
        "http3_request_line": (505, f"GET /hello HTTP/3.0\r\n{h}\r\n"),
        "request_line_too_long": (414, f"GET /{'a' * 9000} HTTP/1.1\r\n{h}\r\n"),
        "head_too_large": (431, f"GET /hello HTTP/1.1\r\n{h}{big}\r\n"),
        "too_many_fields": (431, f"GET /hello HTTP/1.1\r\n{h}{many}\r\n"),
        "te_gzip": (501, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\nxxxx"),
        "te_identity": (501, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: identity\r\n\r\n"),
        "missing_host_11": (400, f"GET /hello HTTP/1.1\r\n{ck}\r\n"),
        "two_hosts_same": (400, f"GET /hello HTTP/1.1\r\n{host_only}{h}\r\n"),
        "two_hosts_differing": (400, f"GET /hello HTTP/1.1\r\nHost: other.localhost\r\n{h}\r\n"),
        "host_with_userinfo": (400, f"GET /hello HTTP/1.1\r\nHost: a@{client.host}\r\n{ck}\r\n"),
        "chunk_size_not_hex": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                                    f"zz\r\nhello\r\n0\r\n\r\n"),
        "chunk_size_overflow": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                                     f"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        "chunk_size_negative": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                                     f"-5\r\nhello\r\n0\r\n\r\n"),
        "chunk_missing_crlf": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                                    f"5\r\nhelloXX0\r\n\r\n"),
        "chunk_bare_lf": (400, f"POST /sink HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"
                               f"5\nhello\n0\n\n"),
    }


ALL = [
    "cl_and_te", "te_and_cl", "two_differing_cl", "cl_list_differing", "cl_negative", "cl_plus",
    "cl_hex", "cl_overflow", "te_chunked_twice", "te_chunked_two_fields", "te_space_before_colon",
    "te_in_http10", "obs_fold", "obs_fold_tab", "bare_lf_everywhere", "bare_lf_one_line",
    "bare_lf_request_line", "bare_cr", "nul_in_value", "ctl_in_value", "del_in_value",
    "esc_in_value", "bad_method_char", "bad_method_paren", "bad_field_name_char",
    "space_in_field_name", "empty_field_name", "leading_space_first_field", "no_colon",
    "request_line_extra_space", "request_line_two_parts", "target_with_space",
    "http2_request_line", "http3_request_line", "request_line_too_long", "head_too_large",
    "too_many_fields", "te_gzip", "te_identity", "missing_host_11", "two_hosts_same",
    "two_hosts_differing", "host_with_userinfo", "chunk_size_not_hex", "chunk_size_overflow",
    "chunk_size_negative", "chunk_missing_crlf", "chunk_bare_lf",
]


def send_and_expect(client, raw, status):
    with client.conn(timeout=5) as c:
        c.send(raw.encode("latin-1"))
        t0 = time.monotonic()
        try:
            r = c.read_head()
        except Closed as e:
            raise AssertionError(f"no {status} response, the connection was just closed ({e}); "
                                 "a client gets no error page")
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"no response within 5 s (expected {status}): the gateway "
                                 "is waiting for more input instead of rejecting")
        assert time.monotonic() - t0 < 3
        assert r.status == status, f"expected {status}, got {r.status} {r.reason}: {r.headers}"
        c.expect_close(CLOSE_WITHIN)
        return r


@pytest.mark.parametrize("shape", ALL)
def test_malformed_request(gateway, client, shape):
    status, raw = shapes(client)[shape]
    send_and_expect(client, raw, status)


def test_te_gzip_chunked(gateway, client):
    """An unsupported coding before chunked: 501 (or 400), and closed."""
    raw = (f"POST /sink HTTP/1.1\r\n{H(client)}Transfer-Encoding: gzip, chunked\r\n\r\n"
           f"0\r\n\r\n")
    with client.conn(timeout=5) as c:
        c.send(raw.encode())
        r = c.read_head()
        assert r.status in (400, 501), r
        c.expect_close(CLOSE_WITHIN)


def test_error_after_valid_request_on_same_connection(gateway, client):
    """A good request, then a smuggling shape on the same connection: 200, then 400 + close."""
    h = H(client)
    with client.conn(timeout=5) as c:
        c.send(f"GET /hello HTTP/1.1\r\n{h}\r\n".encode())
        r = c.read_response()
        assert r.status == 200, r
        c.send(f"POST /sink HTTP/1.1\r\n{h}Content-Length: 3\r\nTransfer-Encoding: chunked"
               f"\r\n\r\n0\r\n\r\n".encode())
        r = c.read_head()
        assert r.status == 400, r
        c.expect_close(CLOSE_WITHIN)


def test_smuggled_request_in_cl_te_body_never_reaches_app(gateway, client):
    """The classic CL.TE shape: the inner request must not be answered."""
    h = H(client)
    inner = f"GET /status/299 HTTP/1.1\r\n{h}\r\n"
    raw = (f"POST /sink HTTP/1.1\r\n{h}Content-Length: {len(inner) + 5}\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")
    with client.conn(timeout=5) as c:
        c.send(raw.encode())
        r = c.read_head()
        assert r.status == 400, r
        rest = c.expect_close(CLOSE_WITHIN)
        assert b" 299 " not in rest, "the smuggled request was answered"


@pytest.mark.parametrize("shape", ["tab_in_value", "high_bytes_in_value", "exactly_90_fields",
                                   "cl_identical_dup"])
def test_well_formed_edge_cases_accepted(gateway, client, shape):
    """The strictness must not reject valid messages."""
    h = H(client)
    raw = {
        "tab_in_value": f"GET /hello HTTP/1.1\r\n{h}X-A: a\tb\r\n\r\n",
        "high_bytes_in_value": f"GET /hello HTTP/1.1\r\n{h}X-A: caf\xe9\r\n\r\n",
        "exactly_90_fields": "GET /hello HTTP/1.1\r\n" + h +
                             "".join(f"X-F{i}: {i}\r\n" for i in range(88)) + "\r\n",
        "cl_identical_dup": f"POST /sink HTTP/1.1\r\n{h}Content-Length: 5\r\n"
                            f"Content-Length: 5\r\n\r\nhello",
    }[shape]
    with client.conn(timeout=5) as c:
        c.send(raw.encode("latin-1"))
        r = c.read_response()
        assert r.status == 200, r


def test_gateway_survived(gateway, client):
    gateway.assert_alive()
    r = client.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r
