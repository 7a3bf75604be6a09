-- 005: the rate_limits clean-up in bounded steps. Per-IP limits are counted here
-- too now (keys "rl:ip:<address>", next to the per-user "rl:u:<user id>"), so the
-- number of rows follows the number of client addresses, which anonymous clients
-- choose. 004 deleted every old row at once, found by a scan of the whole table,
-- from one call in a hundred: work that grows with the table, paid by the request
-- that drew it, and two such calls could deadlock on each other.
--
-- Now: an index on window_start, and the call that draws the clean-up deletes at
-- most 500 of the oldest expired rows, skipping rows another call holds. That is
-- 5 rows per call on average, more than the one row a call can add, so the table
-- stays bounded by the keys of the last few minutes. Same signature and answers as
-- 004 (the store does not change).

CREATE INDEX IF NOT EXISTS rate_limits_window_start_idx ON public.rate_limits (window_start);

CREATE OR REPLACE FUNCTION public.rate_limit_hit(key text, window_seconds integer, max_hits integer,
                                                 OUT allowed boolean, OUT retry_after integer)
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_start timestamptz;
    v_count integer;
BEGIN
    INSERT INTO public.rate_limits AS r (key, window_start, count)
    VALUES (rate_limit_hit.key, now(), 1)
    ON CONFLICT (key) DO UPDATE
       SET window_start = CASE WHEN r.window_start + make_interval(secs => rate_limit_hit.window_seconds) <= now()
                               THEN now() ELSE r.window_start END,
           count = CASE WHEN r.window_start + make_interval(secs => rate_limit_hit.window_seconds) <= now()
                        THEN 1 ELSE r.count + 1 END
    RETURNING r.window_start, r.count INTO v_start, v_count;
    allowed := v_count <= rate_limit_hit.max_hits;
    retry_after := greatest(1, ceil(extract(epoch FROM
        (v_start + make_interval(secs => rate_limit_hit.window_seconds)) - now()))::integer);
    -- Now and then, a bounded batch of windows that ended long ago (rows of a key
    -- that comes back are simply started again).
    IF random() < 0.01 THEN
        DELETE FROM public.rate_limits r
         WHERE r.key IN (SELECT o.key FROM public.rate_limits o
                          WHERE o.window_start < now() - greatest(interval '10 minutes',
                                    2 * make_interval(secs => rate_limit_hit.window_seconds))
                          ORDER BY o.window_start
                          LIMIT 500
                          FOR UPDATE SKIP LOCKED);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION public.rate_limit_hit(text, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.rate_limit_hit(text, integer, integer) TO service_role;
