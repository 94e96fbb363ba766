-- PostgreSQL's shared reservations gained limit_name in this migration. SQLite holds reservations
-- in memory, so here it changes nothing: it keeps both dialects' migration tags in step, since a
-- backup names its schema by tag and restores into either dialect.
SELECT 1;
