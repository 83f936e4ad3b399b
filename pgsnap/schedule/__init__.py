"""The scheduler: pg_cron 1.4 expressions, pgsnap's own foreground scheduler, and the job commands."""
