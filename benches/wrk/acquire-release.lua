-- wrk script: leasehold's uncontended acquire -> release cycle on the native API.
-- Each connection alternates: acquire a random lock with a try-lock (queue "none"), then
-- release it with the ticket from the answer. Each wrk thread seeds its own random stream,
-- so threads do not collide on the same names.
-- Usage: wrk -t2 -c64 -d10s --latency -s acquire-release.lua http://127.0.0.1:8080
-- Set LEASEHOLD_KEY when API keys are configured.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

local pending = {}
local headers = { ["Content-Type"] = "application/json" }
local key = os.getenv("LEASEHOLD_KEY")
if key then headers["x-api-key"] = key end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  local held = table.remove(pending)
  if held then
    return wrk.format("POST", "/v1/locks/" .. held.lock .. "/release", headers,
      '{"ticket":"' .. held.ticket .. '"}')
  end
  local lock = "bench-" .. math.random(1, 100000000)
  return wrk.format("POST", "/v1/locks/" .. lock .. "/acquire", headers, '{"ttl_ms":30000,"queue":"none"}')
end

function response(status, hdrs, body)
  if status == 200 then
    local ticket = body:match('"ticket":"([^"]+)"')
    local lock = body:match('"lock":"([^"]+)"')
    if ticket and lock and body:match('"acquired"') then
      table.insert(pending, { lock = lock, ticket = ticket })
    end
  end
end
