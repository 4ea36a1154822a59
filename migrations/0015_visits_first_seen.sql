-- /stats/visitors and the dashboard's visitors panel (faces/visitors.py VISITORS_SINCE) read the last day's
-- visits across all cameras, every dashboard_refresh_seconds: visits_camera_first_seen_idx leads with
-- camera_id, which PostgreSQL before 18 cannot skip, so without this index that query scans every visit
-- ever kept (visits stay after the embeddings are purged).
CREATE INDEX IF NOT EXISTS visits_first_seen_idx ON visits (first_seen);
