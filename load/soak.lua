-- wrk script of scripts/soak: POSTs as user0 with a unique body per request,
-- "PREFIX-THREAD-N" (PREFIX is the script's first argument), so that the
-- subscriber's distinct payloads can be counted against the 200 answers.
wrk.method = "POST"
wrk.headers["Authorization"] = "Basic dXNlcjA6c2VjcmV0MA=="
wrk.headers["Content-Type"] = "application/octet-stream"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("index", threads)
end

local prefix, n = "", 0
function init(args)
  prefix = (args[1] or "m") .. "-" .. index .. "-"
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, prefix .. n)
end
