-- One wrk script for every HTTP scenario. Arguments after "--": method, body ("" for none), then the paths
-- to spread the requests over. Requests are formatted once per thread, so the client does the least work
-- per request; done() prints one JSON line the harness parses.
local requests_pool = {}

function init(args)
  local method, body = args[1], args[2]
  if body == "" then body = nil end
  local headers = {}
  if body then headers["Content-Type"] = "application/json" end
  for i = 3, #args do
    requests_pool[#requests_pool + 1] = wrk.format(method, args[i], headers, body)
  end
end

function request()
  return requests_pool[math.random(#requests_pool)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
