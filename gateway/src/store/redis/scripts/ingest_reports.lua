-- Stores a run of one device's reports, in order, each once, and only for
-- the device's newest session; stops at the first report it does not store
-- anew, so no report is stored after one the device must hear about first.
--
-- KEYS[1]  <prefix>:{dev:<id>}:reports     hash: seq -> report JSON
-- KEYS[2]  <prefix>:{dev:<id>}:watermark   the highest seq with none missing below
-- KEYS[3]  <prefix>:{dev:<id>}:executions  stream of stored reports
-- KEYS[4]  <prefix>:{dev:<id>}:session     the device's newest session epoch
-- ARGV[1]  how far above the watermark a seq may be (MAX_REPORT_GAP)
-- ARGV[2]  the writing session's epoch, or 0 for a write outside a session
-- ARGV[3…] per report: seq, the report as JSON, the number of stream entry
--          fields and values that follow, then those
--
-- Returns one {outcome, watermark, stored JSON or false} per report
-- attempted, in order:
--   1 stored now; 0 already stored (the JSON stored, for the caller to
--   compare: a resend, or a conflict); -1 seq too far above the watermark;
--   -2 a newer session of the device has begun, nothing written; -3 a
--   command failed (a damaged key), with Redis's error in place of the JSON;
--   -4 the device's newest session is older than the writing one (Redis
--   lost its last writes: a failover, a restore), nothing written.
-- Every outcome but 1 ends the run: the caller writes the rest again once
-- it has looked (a resend is followed by more resends or new reports).
-- Failures are answered rather than raised: the script runs in a pipeline
-- with other devices' reports, which an error would fail too.
-- HSETNX is the exactly-once gate: only the first store appends the stream
-- entry and moves the watermark. All keys share the device's hash tag.
local answers = {}

local function ingest()
  local watermark = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ARGV[2] ~= '0' then
    local newest = tonumber(redis.call('GET', KEYS[4]) or '0')
    local writing = tonumber(ARGV[2])
    if newest > writing then
      answers[#answers + 1] = {-2, watermark, false}
      return
    end
    if newest < writing then
      answers[#answers + 1] = {-4, watermark, false}
      return
    end
  end
  local gap = tonumber(ARGV[1])
  local i = 3
  while i <= #ARGV do
    local seq, json, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local fields = {}
    for f = 1, count do fields[f] = ARGV[i + 2 + f] end
    i = i + 3 + count
    if tonumber(seq) > watermark + gap then
      answers[#answers + 1] = {-1, watermark, false}
      return
    end
    if redis.call('HSETNX', KEYS[1], seq, json) == 0 then
      answers[#answers + 1] = {0, watermark, redis.call('HGET', KEYS[1], seq)}
      return
    end
    redis.call('XADD', KEYS[3], '*', unpack(fields))
    while redis.call('HEXISTS', KEYS[1], tostring(watermark + 1)) == 1 do
      watermark = watermark + 1
    end
    redis.call('SET', KEYS[2], watermark)
    answers[#answers + 1] = {1, watermark, false}
  end
end

local ok, failure = pcall(ingest)
if not ok then
  if type(failure) == 'table' and failure.err then
    failure = failure.err
  end
  answers[#answers + 1] = {-3, 0, tostring(failure)}
end
return answers
