-- Renews one gateway's word that a device is connected, only if the word
-- is still there: a renewal racing the end of the device's session must not
-- bring back the entry the session's end just removed.
--
-- KEYS[1]  <prefix>:{dev:<id>}:presence  hash: gateway instance -> Unix ms until which it vouches
-- ARGV[1]  the gateway instance
-- ARGV[2]  the new Unix ms until which it vouches
--
-- Returns 1 when renewed, 0 when the entry was gone.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
