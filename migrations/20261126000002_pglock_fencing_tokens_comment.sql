-- Documents the fencing-token table where it is looked at: psql's \dt+, pg_description.
COMMENT ON TABLE pglock_fencing_tokens IS
    'pglock fencing tokens: one row per advisory lock key (lock_key is the LockKey''s '
    'Display form, e.g. ''-42'' or ''1,-2''). Each acquisition with fencing increments token; '
    'resources reject writes carrying a token lower than the highest they have seen, so a '
    'holder that lost its lock cannot overwrite newer work. Managed by pglock''s migrations.';
