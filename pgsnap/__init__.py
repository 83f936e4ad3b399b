"""pgsnap: matching-tags snapshots kept by PostgreSQL itself (thin Python driver + CLI).

The package by concern: `cli/` (the commands), `deploy` (migrations and `sql/`), `schedule/`
(pg_cron expressions, pgsnap's scheduler, the job commands), `demo/` (the throwaway cluster,
generated data, the story), and small modules shared by all of them: `db`, `config`,
`resources`, `health`, `progress`, `errors`.
"""

__version__ = "0.1.0"
