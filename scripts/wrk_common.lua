-- Shared by the wrk scripts of scripts/load.sh: thread registry, pacing, and the RESULT line
-- load.sh parses. Loaded with dofile() from the directory of the calling script.
-- PUSH_DELAY_MS > 0 (environment) paces every connection: one request per reply + that delay.

threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local pace = tonumber(os.getenv("PUSH_DELAY_MS") or "0") or 0
if pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, t in ipairs(threads) do
    wrapped = wrapped + (t:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d sock_errors=%d wraps=%d\n",
    summary.requests, summary.duration, summary.requests / summary.duration * 1e6,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout, wrapped))
end
