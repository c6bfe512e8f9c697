-- wrk script: the load of bench/run. A 256-byte body, QoS 1 (in the URL), Basic auth as user0.
wrk.method = "POST"
wrk.body = string.rep("x", 256)
wrk.headers["Authorization"] = "Basic dXNlcjA6c2VjcmV0MA=="
wrk.headers["Content-Type"] = "application/octet-stream"
