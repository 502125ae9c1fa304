-- wrk script for scripts/load.sh: plaintext text pushes, each one fresh.
--   wrk ... -s scripts/push_plain.lua http://127.0.0.1:PORT/wechat -- REQFILE [OPENIDS]
-- REQFILE's first line is the signed query from `load_requests --mode plain`. The plaintext
-- signature covers only token/timestamp/nonce, so one query serves every request while each
-- body carries its own MsgId (no dedupe hits) and one of OPENIDS followers (default 1000).
-- PUSH_DELAY_MS > 0 (environment) paces every connection (see wrk_common.lua).

-- setup(), the PUSH_DELAY_MS pacing and done() live in wrk_common.lua beside this file.
dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "wrk_common.lua")

local FMT = "<xml><ToUserName><![CDATA[gh_loadtest00001]]></ToUserName>"
  .. "<FromUserName><![CDATA[oLoad%023d]]></FromUserName><CreateTime>%s</CreateTime>"
  .. "<MsgType><![CDATA[text]]></MsgType>"
  .. "<Content><![CDATA[what is the price of item %d?]]></Content><MsgId>%s%09d</MsgId></xml>"

function init(args)
  local f = assert(io.open(args[1], "r"), "cannot open the request file " .. tostring(args[1]))
  local query = f:read("*l")
  f:close()
  openids = tonumber(args[2] or "1000") or 1000
  create_time = assert(query:match("timestamp=(%d+)"), "no timestamp in " .. args[1])
  path = wrk.path .. "?" .. query
  -- 17-digit MsgIds: seconds (mod 10^6), thread, counter; the next run has other seconds.
  prefix = string.format("%06d%02d", os.time() % 1000000, tid)
  counter = 0
  wraps = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "text/xml"
end

function request()
  counter = counter + 1
  local body = string.format(FMT, counter % openids, create_time, counter, prefix, counter)
  return wrk.format(nil, path, nil, body)
end
