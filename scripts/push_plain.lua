-- wrk script for scripts/load.sh: plaintext text pushes, each one fresh.
--   wrk ... -s scripts/push_plain.lua http://127.0.0.1:PORT/wechat -- REQFILE [OPENIDS]
--   wrk -tT ... -s scripts/push_plain.lua http://127.0.0.1:PORT/ -- PATH=REQFILE[,PATH=REQFILE...] OPENIDS T
-- REQFILE's first line is the signed query from `load_requests --mode plain`. The plaintext
-- signature covers only token/timestamp/nonce, so one query serves every request while each
-- body carries its own MsgId (no dedupe hits) and one of OPENIDS followers (default 1000).
-- The second form (SCENARIO=accounts) names one PATH=REQFILE per account (each REQFILE signed
-- with that account's token): thread i of T pushes only to account ((i - 1) mod N) + 1 of the N
-- listed, with ToUserName gh_loadtest0000K for account K, and only for its own OPENIDS / T
-- followers (thread i: followers (i - 1) * OPENIDS / T and up), so the pushes of one account
-- and of several differ in nothing but where they go. The URL's path is not used then.
-- PUSH_DELAY_MS > 0 (environment) paces every connection (see wrk_common.lua).

-- setup(), the PUSH_DELAY_MS pacing and done() live in wrk_common.lua beside this file.
dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "wrk_common.lua")

local FMT = "<xml><ToUserName><![CDATA[%s]]></ToUserName>"
  .. "<FromUserName><![CDATA[oLoad%023d]]></FromUserName><CreateTime>%s</CreateTime>"
  .. "<MsgType><![CDATA[text]]></MsgType>"
  .. "<Content><![CDATA[what is the price of item %d?]]></Content><MsgId>%s%09d</MsgId></xml>"

local function read_query(file)
  local f = assert(io.open(file, "r"), "cannot open the request file " .. tostring(file))
  local query = f:read("*l")
  f:close()
  return query, assert(query:match("timestamp=(%d+)"), "no timestamp in " .. file)
end

function init(args)
  openids = tonumber(args[2] or "1000") or 1000
  first_openid = 0
  to_user = "gh_loadtest00001"
  if args[1]:find("=", 1, true) then
    local accounts = {}
    for entry in args[1]:gmatch("[^,]+") do
      local p, file = entry:match("^([^=]+)=(.+)$")
      accounts[#accounts + 1] = { path = assert(p, "not PATH=REQFILE: " .. entry), file = file }
    end
    local nthreads = tonumber(args[3] or "1") or 1
    local k = (tid - 1) % #accounts + 1
    local query
    query, create_time = read_query(accounts[k].file)
    path = accounts[k].path .. "?" .. query
    to_user = string.format("gh_loadtest%05d", k)
    openids = math.max(1, math.floor(openids / nthreads))
    first_openid = (tid - 1) * openids
  else
    local query
    query, create_time = read_query(args[1])
    path = wrk.path .. "?" .. query
  end
  -- 17-digit MsgIds: seconds (mod 10^6), thread, counter; the next run has other seconds.
  prefix = string.format("%06d%02d", os.time() % 1000000, tid)
  counter = 0
  wraps = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "text/xml"
end

function request()
  counter = counter + 1
  local body = string.format(FMT, to_user, first_openid + counter % openids, create_time,
    counter, prefix, counter)
  return wrk.format(nil, path, nil, body)
end
