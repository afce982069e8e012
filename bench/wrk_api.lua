-- wrk script for the API benchmarks (bench/loadgen.py runs it). Read from the environment:
--   BENCH_METHOD     GET or POST
--   BENCH_PATHS      a file of request paths, one a line, sent in turn (each thread starts
--                    at a different line)
--   BENCH_BODY       the request body (POST), sent as application/json
--   BENCH_AUTH       the Authorization header value, if any
-- done() prints one line: BENCH_RESULT {json}; latencies in microseconds.

local counter = 0

function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
end

local requests = {}
local n = 0
local i = 0

function init(args)
  local method = os.getenv("BENCH_METHOD") or "GET"
  local body = os.getenv("BENCH_BODY")
  local headers = {}
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then
    headers["Authorization"] = auth
  end
  if body and body ~= "" then
    headers["Content-Type"] = "application/json"
  else
    body = nil
  end
  for path in io.lines(os.getenv("BENCH_PATHS")) do
    if path ~= "" then
      n = n + 1
      requests[n] = wrk.format(method, path, headers, body)
    end
  end
  i = ((thread_id or 0) * 7919) % n
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, ' ..
    '"errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
    '"errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
