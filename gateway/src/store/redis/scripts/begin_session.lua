-- Begins a new session of one device: takes the next epoch, which fences
-- off every earlier session's report writes (ingest_reports.lua), and reads
-- the watermark in the same step, so no earlier session can move it after.
--
-- KEYS[1]  <prefix>:{dev:<id>}:session    the device's newest session epoch
-- KEYS[2]  <prefix>:{dev:<id>}:watermark  the highest seq with none missing below
--
-- Returns {epoch, watermark}.
local epoch = redis.call('INCR', KEYS[1])
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
