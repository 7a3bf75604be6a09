-- Per-user rate limits shared by every host (issue #5: "rate limits and
-- concurrency caps hold across hosts"). One fixed-window counter per key; the
-- engine's concurrency caps already live in claim_next_task.

CREATE TABLE IF NOT EXISTS public.rate_limits (
    key          text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL
);
ALTER TABLE public.rate_limits ENABLE ROW LEVEL SECURITY; -- no policies: service_role only

-- Counts one hit for `key` in a window of `window_seconds`. Returns
-- {allowed, retry_after}: retry_after is the seconds left in the window.
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
    -- Old windows are dropped now and then, so the table stays small.
    IF random() < 0.01 THEN
        DELETE FROM public.rate_limits r WHERE r.window_start < now() - interval '1 hour';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION public.rate_limit_hit(text, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.rate_limit_hit(text, integer, integer) TO service_role;
REVOKE ALL ON public.rate_limits FROM anon, authenticated;
GRANT ALL ON public.rate_limits TO service_role;
