-- wrk script for the authorized GET /api/projects benchmark.
-- The access token comes from the environment (bench/run.sh exports it):
--   AICODE_TOKEN=<jwt> wrk -t2 -c64 -d10s -s bench/projects.lua http://127.0.0.1:PORT/api/projects
local token = os.getenv("AICODE_TOKEN")
if token == nil or token == "" then
    error("bench/projects.lua: set AICODE_TOKEN to an access token (bin/aicode token --user <uuid>)")
end

wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Accept"] = "application/json"
