"""A hostile app for the cross-app tests (test_isolation.py): its page, opened by its own
user's session, attacks another app of the same gateway the way a page can; its responses
plant a cookie for the gateway's whole domain.

    evilapp.py SOCKET DOMAIN
"""
import asyncio
import sys

PAGE = b"""<!doctype html><html><head><title>evil</title></head><body>
<iframe name="sink" style="display:none"></iframe>
<script>
(async () => {
  const v = new URLSearchParams(location.search).get('victim');
  const out = {};
  try {
    await fetch(v + '/echo', {method: 'POST', body: 'fetch-attack', credentials: 'include',
                              mode: 'no-cors'});
    out.fetch = 'sent';
  } catch (e) { out.fetch = 'error: ' + e; }
  await new Promise((ok) => {
    const f = document.createElement('form');
    f.method = 'POST'; f.action = v + '/echo'; f.target = 'sink';
    const i = document.createElement('input'); i.name = 'x'; i.value = 'form-attack';
    f.appendChild(i); document.body.appendChild(f);
    document.querySelector('iframe').onload = ok; setTimeout(ok, 5000);
    f.submit();
  });
  out.form = 'sent';
  await new Promise((ok) => { const i = new Image(); i.onload = i.onerror = ok;
                              i.src = v + '/_jobgate/logout'; });
  out.img = 'sent';
  await new Promise((ok) => {
    const ws = new WebSocket(v.replace(/^https/, 'wss') + '/ws');
    ws.onopen = () => { out.ws = 'open'; ws.close(); ok(); };
    ws.onerror = () => { out.ws = 'refused'; ok(); };
    setTimeout(ok, 5000);
  });
  document.title = 'done ' + JSON.stringify(out);
})();
</script></body></html>
"""


async def handle(r, w, domain):
    try:
        while True:
            line = await r.readline()
            if not line:
                return
            while (await r.readline()) not in (b"\r\n", b"\n", b""):
                pass
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                    b"Set-Cookie: planted=1; Domain=" + domain.encode() +
                    b"; Path=/; Secure\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE)
            await w.drain()
    finally:
        w.close()


async def main():
    sock, domain = sys.argv[1], sys.argv[2]
    srv = await asyncio.start_unix_server(lambda r, w: handle(r, w, domain), path=sock)
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
