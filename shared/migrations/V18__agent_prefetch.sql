-- An agent may hold a few assignments beyond its running capacity (its
-- prefetch), so a freed slot starts the next job at once instead of idling
-- for the report -> match -> assign round trip. The matcher fills a bot up
-- to `capacity + prefetch`; the agent runs at most `capacity` at a time and
-- gives back, unstarted, what it holds when it stops.
ALTER TABLE bots ADD COLUMN prefetch int NOT NULL DEFAULT 0 CHECK (prefetch >= 0);
