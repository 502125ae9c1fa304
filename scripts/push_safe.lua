-- wrk script for scripts/load.sh: safe-mode (encrypted) text pushes, each sent once.
--   wrk -tT ... -s scripts/push_safe.lua http://127.0.0.1:PORT/wechat -- REQFILE T
-- REQFILE comes from `load_requests --mode safe --count N`: line 1 the signed query, then one
-- `msg_signature<TAB>body` per pre-encrypted push. Thread i of T takes every T-th line, so no
-- push is sent twice unless a thread runs out and starts over (counted as `wraps`; a wrapped
-- push is a dedupe hit for kefu, so the scenario sizes N to avoid it).
-- PUSH_DELAY_MS > 0 (environment) paces every connection (see wrk_common.lua).

-- setup(), the PUSH_DELAY_MS pacing and done() live in wrk_common.lua beside this file.
dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "wrk_common.lua")

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
