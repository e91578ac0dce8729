-- Raises a device's position in a channel, never lowers it.
--
-- KEYS[1]  <prefix>:{dev:<id>}:<positions or delivered>  hash: channel -> position
-- ARGV[1]  the channel
-- ARGV[2]  the position
--
-- Returns 0.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
