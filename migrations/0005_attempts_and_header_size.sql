-- How often a dead-lettered message was tried: 1 for a bad message, more for one that kept failing while
-- its service worked (faults.py).
ALTER TABLE processing_errors ADD COLUMN attempts integer NOT NULL DEFAULT 1 CHECK (attempts >= 1);
-- A frame whose headers claimed another size than its JPEG has: the claim ("640x480"); width and height
-- hold the JPEG's own size. NULL when they agree.
ALTER TABLE frame_results ADD COLUMN header_size text;
