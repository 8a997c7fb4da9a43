-- wrk script for the split scenario: cycles through 1,000 prebuilt requests, each with its own
-- `sid` cookie, so a 10% sticky split sends about 10% of the clients (and requests) to `new`.
-- The requests are formatted once in init(); request() only returns the next one.
local reqs = {}
local i = 0

init = function(args)
  for k = 1, 1000 do
    reqs[k] = wrk.format("GET", wrk.path, { ["Cookie"] = "sid=user-" .. k .. "-4f9a2c7e" })
  end
end

request = function()
  i = i % #reqs + 1
  return reqs[i]
end
