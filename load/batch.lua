-- wrk script: batches for load/run's batch row. POST /messages with 100 messages of 256 bytes
-- each (QoS 1, the default), to the 64 topics bench/t0 .. bench/t63 in turn, Basic auth as
-- user0. Each 200 is 100 messages the broker accepted.
local messages = {}
for i = 0, 99 do
  messages[#messages + 1] = string.format('{"topic": "bench/t%d", "payload": "%s"}', i % 64, string.rep("x", 256))
end
wrk.method = "POST"
wrk.path = "/messages"
wrk.body = "[" .. table.concat(messages, ",") .. "]"
wrk.headers["Authorization"] = "Basic dXNlcjA6c2VjcmV0MA=="
wrk.headers["Content-Type"] = "application/json"
