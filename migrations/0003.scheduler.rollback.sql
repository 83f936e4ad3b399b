-- Drops the pgsnap scheduler's jobs and run history.

DELETE FROM pgsnap.settings WHERE key = 'job_history_retention';
DROP TABLE pgsnap.job_run_details;
DROP TABLE pgsnap.jobs;
