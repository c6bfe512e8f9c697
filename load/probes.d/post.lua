-- wrk script of load/probes: a 256-byte body, QoS 1 (in the URL). The Authorization
-- header comes from wrk's -H, so each probe chooses its own user.
wrk.method = "POST"
wrk.body = string.rep("x", 256)
wrk.headers["Content-Type"] = "application/octet-stream"
