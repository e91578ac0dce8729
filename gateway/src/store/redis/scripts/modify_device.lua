-- Compare-and-set of one device record together with the index that keeps
-- device names unique within an account.
--
-- KEYS[1]  <prefix>:{registry}:devices  hash: device id -> record JSON
-- KEYS[2]  <prefix>:{registry}:names    hash: name key -> device id
-- ARGV[1]  the device id
-- ARGV[2]  the record as the caller read it ('' for none)
-- ARGV[3]  the new record
-- ARGV[4]  the record's old name key ('' for none)
-- ARGV[5]  its new name key
--
-- Returns 1 when written, 0 when the record changed since it was read (read
-- it again and retry), -1 when another device holds the name.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[5])
if holder and holder ~= ARGV[1] then
  -- Taking a name another device holds is refused; keeping its own name
  -- (two old names that now compare equal) is not: the other keeps the
  -- index entry, and this device can still be revoked or resubscribed.
  if ARGV[4] ~= ARGV[5] then return -1 end
else
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
-- The old entry goes only if it is this device's own.
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[5] and redis.call('HGET', KEYS[2], ARGV[4]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
