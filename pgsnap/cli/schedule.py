"""CLI: schedule install|remove|list|next|run — the jobs (pgsnap/schedule/jobs.py) and the
foreground scheduler (pgsnap/schedule/scheduler.py)."""

import logging

import click

from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import echo_json, finish, iso, json_option, table, utc
from pgsnap.errors import Exit, PgsnapError, first_line
from pgsnap.schedule import cron, jobs, scheduler


@click.group("schedule")
def schedule() -> None:
    """Schedule the backfill and the stale targets' re-population (pg_cron, or `pgsnap schedule run`)."""


@schedule.command("install")
@click.option("--schedule", "expr", default=jobs.BACKFILL.schedule, show_default=True,
              help="When the backfill job runs: pg_cron 1.4 expression, UTC.")
@click.option("--name", default=jobs.BACKFILL.name, show_default=True, help="The backfill job's name.")
@click.option("--stale-schedule", "stale_expr", default=jobs.STALE.schedule, show_default=True,
              help="When the stale-targets job runs.")
@click.option("--stale-name", default=jobs.STALE.name, show_default=True,
              help="The stale-targets job's name.")
@click.option("--runner", type=click.Choice(["auto", "pg_cron", "pgsnap"]),
              default="auto", show_default=True,
              help="auto: pg_cron when the extension is installed, else pgsnap's "
                   "scheduler.")
@pass_app
def install_cmd(app: App, expr: str, name: str, stale_expr: str, stale_name: str, runner: str) -> None:
    """Register the backfill job and the stale-targets job (idempotent by name)."""
    wanted = [(name, jobs.parse_schedule(expr, runner), jobs.BACKFILL.command),  # before connecting
              (stale_name, jobs.parse_schedule(stale_expr, runner), jobs.STALE.command)]
    if name == stale_name:
        raise PgsnapError(f'the two jobs need two names, not "{name}" twice', Exit.CANNOT_RUN)
    with jobs.runners(app.connect(), app.dsn) as r:
        for job_name, parsed, command in wanted:
            used, jobid, removed = jobs.install(r, job_name, parsed, runner, command)
            if used == "pg_cron":
                where = "" if r.cron is r.conn else f" (from database {r.cron_dbname})"
                click.echo(f'pg_cron job {jobid} "{job_name}" runs "{command}" at '
                           f'"{parsed.expr}" UTC in database {r.dbname}{where}')
            else:
                why = f" ({r.cron_problem})" if runner == "auto" else ""
                click.echo(f'pgsnap job {jobid} "{job_name}" runs "{command}" at '
                           f'"{parsed.expr}" UTC once `pgsnap schedule run` runs{why}')
            for other, other_id in removed:
                click.echo(f'removed {other} job {other_id} "{job_name}" (a job lives in one runner)')


@schedule.command("remove")
@click.option("--name", default=jobs.BACKFILL.name, show_default=True, help="The backfill job's name.")
@click.option("--stale-name", default=jobs.STALE.name, show_default=True,
              help="The stale-targets job's name.")
@pass_app
def remove_cmd(app: App, name: str, stale_name: str) -> None:
    """Remove both jobs from pg_cron and from pgsnap's scheduler."""
    with jobs.runners(app.connect(), app.dsn) as r:
        for job_name in (name, stale_name):
            removed = jobs.remove(r, job_name)
            for runner, jobid in removed:
                click.echo(f'removed {runner} job {jobid} "{job_name}"')
            if not removed:
                click.echo(f'no job named "{job_name}"')


@schedule.command("list")
@json_option
@pass_app
def list_cmd(app: App, as_json: bool) -> None:
    """Jobs of this database with their last run."""
    with jobs.runners(app.connect(), app.dsn) as r:
        found = jobs.list_jobs(r)
        if r.cron is None and r.cron_dbname is not None:
            click.echo(f"note: {r.cron_problem}", err=True)
    if as_json:
        echo_json([{**jobs.job_dict(j), "last_start": iso(j.last_start)} for j in found])
        return
    if not found:
        click.echo("no jobs; add one with `pgsnap schedule install`")
        return
    rows = [("runner", "jobid", "name", "schedule", "active", "last run (UTC)",
             "status", "message")]
    rows += [(j.runner, j.jobid, j.jobname, j.schedule, "yes" if j.active else "no",
              utc(j.last_start), j.last_status, first_line(j.last_message or "-")) for j in found]
    click.echo("\n".join(table(rows)))


@schedule.command("next")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--name", default=None, help="Only this job.")
@json_option
@pass_app
def next_cmd(app: App, count: int, name: str | None, as_json: bool) -> None:
    """Next run times (UTC) of each job, by pg_cron 1.4's rules."""
    with jobs.runners(app.connect(), app.dsn) as r:
        found = [j for j in jobs.list_jobs(r) if name is None or j.jobname == name]
    if name is not None and not found:
        raise PgsnapError(f'no job named "{name}"', Exit.CANNOT_RUN)
    now = scheduler.utcnow()
    listed = []
    for j in found:
        entry = {"name": j.jobname, "runner": j.runner, "schedule": j.schedule, "active": j.active}
        try:
            entry["next_runs"] = [iso(at) for at in cron.next_runs(j.schedule, now, count)]
        except cron.CronError as exc:
            entry["next_runs"], entry["no_next_run"] = [], exc.reason
        listed.append(entry)
    if as_json:
        echo_json(listed)
        return
    if not found:
        click.echo("no jobs; add one with `pgsnap schedule install`")
    for entry in listed:
        click.echo(f'{entry["name"]} ({entry["runner"]}, "{entry["schedule"]}"'
                   f'{"" if entry["active"] else ", inactive"}):')
        for at in entry["next_runs"]:
            click.echo(f"  {at.replace('T', ' ').removesuffix('Z')}")
        if "no_next_run" in entry:
            click.echo(f"  no next run: {entry['no_next_run']}")


@schedule.command("run")
@click.option("--once", "once", metavar="JOB", default=None,
              help="Run this job now, in the foreground, and exit.")
@click.option("--tick", default=1.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds between checks.")
@click.option("--stop-timeout", default=60.0, show_default=True,
              type=click.FloatRange(0),
              help="On SIGTERM, seconds a non-backfill run gets before it is cancelled.")
@pass_app
def run_cmd(app: App, once: str | None, tick: float, stop_timeout: float) -> None:
    """Run pgsnap's scheduler in the foreground (or one job with --once)."""
    conn = app.connect()
    if once is None:
        conn.close()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                            "%(name)s: %(message)s")
        code = scheduler.run_scheduler(app.dsn, tick=tick, stop_timeout=stop_timeout)
        click.get_current_context().exit(code)
    job = scheduler.find_job(conn, once)
    if job is None:
        with jobs.runners(conn, app.dsn) as r:
            found = [j for j in jobs.list_jobs(r) if j.jobname == once]
        if not found:
            raise PgsnapError(f'no job named "{once}"', Exit.CANNOT_RUN)
        job = scheduler.Job(None, once, found[0].schedule, found[0].command, r.dbname, "")
    run = scheduler.run_once(app.dsn, job)
    click.echo(f"{once}: {run.status}" + (f" ({run.message})" if run.message else ""))
    finish(Exit.FINDING if run.status == "failed" else 0)
