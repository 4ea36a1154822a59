-- A dead letter whose reason is an exception no check of ours raised (a decoder's, a model's, a plug-in's,
-- a parser's): what the dead-letter breaker counts, also across restarts (faults.py DeadLetterBreaker).
-- Refusals we chose (a bucket not allowed, a missing or oversized object) stay false: a storm of them is
-- bad messages, not a bug, and never holds an agent.
ALTER TABLE processing_errors ADD COLUMN unexpected boolean NOT NULL DEFAULT false;
