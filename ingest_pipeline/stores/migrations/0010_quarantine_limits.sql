-- The limits a document was quarantined under when a limit, not its content, refused it (time-limit, memory-limit,
-- crashed, too-large), e.g. {"timeout_s": 60} or {"memory_mb": 1024}: a run under a larger limit tries it again.
-- NULL: the content is at fault, and the same bytes stay quarantined under any settings.
ALTER TABLE ingest.quarantine ADD COLUMN limits jsonb;

-- Quarantined before causes were told apart: a limit whose size was not recorded, or a worker that failed to start
-- or whose pipe broke (recorded as the step's own exception type). None is a verdict on the document: the next
-- run tries each once more, and records the limits if it is refused again.
UPDATE ingest.documents d SET status = 'registered', updated_at = now()
FROM ingest.quarantine q
WHERE q.doc_id = d.doc_id AND q.content_sha256 = d.content_sha256 AND d.status = 'quarantined'
  AND (q.reason_code IN ('time-limit', 'memory-limit', 'crashed')
       OR (q.reason_code = 'parser-error' AND q.reason IN ('unreadable (RuntimeError)', 'unreadable (BrokenPipeError)',
                                                          'unreadable (ConnectionResetError)', 'unreadable (EOFError)',
                                                          'unreadable (OSError)')));
