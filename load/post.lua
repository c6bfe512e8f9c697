-- wrk script: the load of load/run. A 256-byte body, QoS 1 (in the URL), Basic auth as user0,
-- to 64 topics in turn, bench/t0 .. bench/t63: a fleet of devices, each publishing to its own
-- topic. (serve's pool of broker connections keeps one topic's messages on one connection, so a
-- single topic would measure one connection.) The URL given to wrk names only the host:
-- request() makes the path.
wrk.method = "POST"
wrk.body = string.rep("x", 256)
wrk.headers["Authorization"] = "Basic dXNlcjA6c2VjcmV0MA=="
wrk.headers["Content-Type"] = "application/octet-stream"

-- Each wrk thread has its own Lua state, so its own counter: each thread goes round the 64.
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, "/topics/bench/t" .. (n % 64) .. "?qos=1")
end
