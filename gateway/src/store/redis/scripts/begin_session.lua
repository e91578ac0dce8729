-- Begins a new session of one device: takes the next epoch, which fences
-- off every earlier session's report writes (ingest_reports.lua), and reads
-- the watermark in the same step, so no earlier session can move it after.
--
-- KEYS[1]  <prefix>:{dev:<id>}:session    the device's newest session epoch
-- KEYS[2]  <prefix>:{dev:<id>}:watermark  the highest seq with none missing below
--
-- The epoch is the greater of the last one plus one and Redis's clock in
-- Unix ms (TIME: one clock for the device's key, whichever gateway asks),
-- so it never repeats one a live session holds, even after Redis lost its
-- last writes (a failover to a replica behind, a restore), as long as the
-- clock of the Redis that takes over is not behind by more than it lost.
-- Unix ms stay far below 2^53, where Lua's numbers are exact.
--
-- Returns {epoch, watermark}.
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local epoch = math.max(last + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f', epoch))
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
