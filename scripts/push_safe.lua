-- wrk script for scripts/load.sh: safe-mode (encrypted) text pushes, each sent once.
--   wrk -tT ... -s scripts/push_safe.lua http://127.0.0.1:PORT/wechat -- REQFILE T
-- REQFILE comes from `load_requests --mode safe --count N`: line 1 the signed query, then one
-- `msg_signature<TAB>body` per pre-encrypted push. Thread i of T takes every T-th line, so no
-- push is sent twice unless a thread runs out and starts over (counted as `wraps`; a wrapped
-- push is a dedupe hit for kefu, so the scenario sizes N to avoid it).
-- PUSH_DELAY_MS > 0 (environment) paces every connection: one request per reply + that delay.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local nthreads = tonumber(args[2] or "1") or 1
  local f = assert(io.open(args[1], "r"), "cannot open the request file " .. tostring(args[1]))
  local query = f:read("*l")
  base_path = wrk.path .. "?" .. query .. "&encrypt_type=aes&msg_signature="
  sigs, bodies = {}, {}
  local i = 0
  for line in f:lines() do
    if i % nthreads == tid - 1 then
      local tab = line:find("\t", 1, true)
      sigs[#sigs + 1] = line:sub(1, tab - 1)
      bodies[#bodies + 1] = line:sub(tab + 1)
    end
    i = i + 1
  end
  f:close()
  assert(#bodies > 0, "no pushes for thread " .. tid .. " in " .. args[1])
  idx = 0
  wraps = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "text/xml"
end

function request()
  idx = idx + 1
  if idx > #bodies then
    idx = 1
    wraps = wraps + 1
  end
  return wrk.format(nil, base_path .. sigs[idx], nil, bodies[idx])
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
