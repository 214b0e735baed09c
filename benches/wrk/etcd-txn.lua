-- wrk script: etcd v3 lock-style transaction on its JSON gateway: create a random key only
-- if it does not exist (what a lock acquire costs in etcd).
-- Usage: wrk -t2 -c64 -d10s --latency -s etcd-txn.lua http://127.0.0.1:2379/
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Base64 of a short ASCII string.
local function base64(text)
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 4 - (3 - (#text - i + 1 >= 3 and 3 or #text - i + 1))
    for k = 1, 4 do
      if k <= chars then
        local index = math.floor(n / 64 ^ (4 - k)) % 64
        out[#out + 1] = alphabet:sub(index + 1, index + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

-- LEASEHOLD_ETCD_VALUE_BYTES: the value's size (3 bytes unless set), to put a leader's
-- batch's worth (benches/cluster.sh, etcd's ceiling).
local value = "dG9r"
local value_bytes = tonumber(os.getenv("LEASEHOLD_ETCD_VALUE_BYTES") or "")
if value_bytes and value_bytes > 3 then value = string.rep("QUFB", math.floor(value_bytes / 3)) end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  local key = base64("lock/" .. math.random(1, 100000000))
  local body = '{"compare":[{"key":"' .. key .. '","target":"CREATE","create_revision":"0"}],'
    .. '"success":[{"request_put":{"key":"' .. key .. '","value":"' .. value .. '"}}],'
    .. '"failure":[{"request_range":{"key":"' .. key .. '"}}]}'
  return wrk.format("POST", "/v3/kv/txn", nil, body)
end
