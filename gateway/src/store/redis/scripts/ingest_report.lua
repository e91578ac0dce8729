-- Stores one report of one device, once, and only for its newest session.
--
-- KEYS[1]  <prefix>:{dev:<id>}:reports     hash: seq -> report JSON
-- KEYS[2]  <prefix>:{dev:<id>}:watermark   the highest seq with none missing below
-- KEYS[3]  <prefix>:{dev:<id>}:executions  stream of stored reports
-- KEYS[4]  <prefix>:{dev:<id>}:session     the device's newest session epoch
-- ARGV[1]  seq
-- ARGV[2]  the report as JSON
-- ARGV[3]  how far above the watermark a seq may be (MAX_REPORT_GAP)
-- ARGV[4]  the writing session's epoch, or 0 for a write outside a session
-- ARGV[5…] the stream entry's fields and values
--
-- Returns {outcome, watermark, stored JSON or false}:
--   1 stored now; 0 already stored (the JSON stored, for the caller to
--   compare); -1 seq too far above the watermark; -2 a newer session of the
--   device has begun, nothing written; -3 a command failed (a damaged key),
--   with Redis's error in place of the JSON. Answered rather than raised:
--   the script runs in a pipeline with other devices' reports, which an
--   error would fail too.
-- HSETNX is the exactly-once gate: only the first store appends the stream
-- entry and moves the watermark. All keys share the device's hash tag.
local function ingest()
  local watermark = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ARGV[4] ~= '0' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[4] then
    return {-2, watermark, false}
  end
  if tonumber(ARGV[1]) > watermark + tonumber(ARGV[3]) then
    return {-1, watermark, false}
  end
  local stored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
  if stored == 0 then
    return {0, watermark, redis.call('HGET', KEYS[1], ARGV[1])}
  end
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[3], '*', unpack(fields))
  while redis.call('HEXISTS', KEYS[1], tostring(watermark + 1)) == 1 do
    watermark = watermark + 1
  end
  redis.call('SET', KEYS[2], watermark)
  return {1, watermark, false}
end

local ok, answer = pcall(ingest)
if ok then
  return answer
end
if type(answer) == 'table' and answer.err then
  answer = answer.err
end
return {-3, 0, tostring(answer)}
