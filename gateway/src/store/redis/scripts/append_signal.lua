-- Appends a signal to its channel's log at the channel's next position, once
-- per idempotency key. The stream entry's id is the position (`<position>-0`),
-- so reading by position needs no index.
--
-- KEYS[1]  <prefix>:{ch:<channel>}:head          the channel's newest position
-- KEYS[2]  <prefix>:{ch:<channel>}:signals       stream of signals
-- KEYS[3]  <prefix>:{ch:<channel>}:publish-keys  hash: idempotency key -> position
-- ARGV[1]  the publisher's idempotency key, or '' for none
-- ARGV[2…] the stream entry's fields and values
--
-- Returns {position, replayed}: replayed is 1 when the key was used before
-- (nothing appended; the position is the one it published), else 0.
if ARGV[1] ~= '' then
  local published = redis.call('HGET', KEYS[3], ARGV[1])
  if published then return {tonumber(published), 1} end
end
local position = redis.call('INCR', KEYS[1])
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], position .. '-0', unpack(fields))
if ARGV[1] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], position) end
return {position, 0}
