-- wrk script: POST a fixed JSON body (file in $WRK_BODY) with an optional bearer key ($WRK_AUTH) and, for
-- streams ($WRK_STREAM=1), Accept: text/event-stream; with $WRK_DISTINCT=1 a new prompt every request.
-- Prints one machine-readable line (WRKJSON {...}) at the end.
-- No response() callback on purpose: defining one makes wrk parse every response in Lua and slows it down.
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
if os.getenv("WRK_STREAM") == "1" then
  wrk.headers["Accept"] = "text/event-stream"
end
-- WRK_DISTINCT=1: "__N__" in the body becomes a per-request counter, so no two prompts are the same
if os.getenv("WRK_DISTINCT") == "1" then
  local n = 0
  local head, tail = body:match("^(.*)__N__(.*)$")
  assert(head, "WRK_DISTINCT=1 needs __N__ in the body")
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. n .. tail)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_min_us":%d,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
