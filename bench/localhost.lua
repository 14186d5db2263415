-- wrk script: make *.localhost reach 127.0.0.1, as browsers and curl do.
-- glibc does not resolve these names, and giving wrk 127.0.0.1 with a Host
-- header would send the wrong TLS server name. With this resolver wrk
-- connects to https://ALIAS.localhost:PORT/ with matching SNI and Host.
-- The script defines no request/response hooks, so wrk keeps its fast path.
local resolve = wrk.resolve

function wrk.resolve(host, service)
   if host == "localhost" or host:sub(-#".localhost") == ".localhost" then
      host = "127.0.0.1"
   end
   return resolve(host, service)
end
