-- When each series and each sidecar sequence was last written, so idle ones can expire after the
-- retention period (rows from before this migration count as written now).
ALTER TABLE variant_totals ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE proxy_seq ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
UPDATE variant_totals SET updated_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
UPDATE proxy_seq SET updated_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
