-- meshpass-bench's wrk script. Environment: MESHPASS_WRK_MODE, MESHPASS_WRK_FILE
--   static (or unset)  the request wrk was given (-H headers): no per-request Lua at all
--   bearer FILE        GET, `authorization: Bearer <line i>` (a new token per request)
--   body FILE          POST, the body is line i (e.g. a token-exchange form)
--   MESHPASS_WRK_ADDRS  host:port,host:port,...: thread i connects to address i mod n (the
--                       load split across replicas); MESHPASS_WRK_SPLIT=T: thread i takes
--                       lines i, i+T, ... so no two threads send the same line
-- (wrk decides whether a script is static when it loads it, before init(): hence the
-- environment, not script arguments.)
-- Lines are used in order; past the last one they start again and `wrapped` counts it.
-- done() prints one line `WRKJSON {...}` (latencies in microseconds).
local mode = os.getenv("MESHPASS_WRK_MODE") or "static"
local file = os.getenv("MESHPASS_WRK_FILE")
local lines, n, i, base = {}, 0, 0, {}
-- A global: done() reads it from each thread with thread:get().
wrapped = 0
local threads = {}
local addrs = os.getenv("MESHPASS_WRK_ADDRS")
local split = tonumber(os.getenv("MESHPASS_WRK_SPLIT") or "1")
-- Set per thread by setup() (0 in the single-thread case).
id = 0

function setup(thread)
  table.insert(threads, thread)
  local tid = #threads - 1
  thread:set("id", tid)
  if addrs then
    local list = {}
    for a in string.gmatch(addrs, "[^,]+") do table.insert(list, a) end
    local host, port = list[(tid % #list) + 1]:match("^(.*):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
end

function init(args)
  if mode ~= "static" then
    local k = 0
    for line in io.lines(file) do
      if k % split == id then
        n = n + 1
        lines[n] = line
      end
      k = k + 1
    end
    -- Fewer lines than threads (the one warm token): every thread sends them all.
    if n == 0 then
      for line in io.lines(file) do
        n = n + 1
        lines[n] = line
      end
    end
  end
  for k, v in pairs(wrk.headers) do base[k] = v end
end

local function next_line()
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return lines[i]
end

if mode ~= "static" then
  request = function()
    if mode == "bearer" then
      local h = {}
      for k, v in pairs(base) do h[k] = v end
      h["Authorization"] = "Bearer " .. next_line()
      return wrk.format("GET", nil, h, nil)
    elseif mode == "body" then
      return wrk.format("POST", nil, nil, next_line())
    end
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (tonumber(t:get("wrapped")) or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"wrapped":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, w))
end
