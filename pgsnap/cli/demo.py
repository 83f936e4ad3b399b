"""CLI: demo — the whole story in a private throwaway PostgreSQL (pgsnap/demo/)."""

import time

import click

from pgsnap.config import resolve_dsn
from pgsnap.demo import story
from pgsnap.demo.cluster import EmbeddedCluster

NAME = "pgsnap demo"  # the sessions' application_name


@click.command()
@click.option("--me-files", type=click.IntRange(1), default=None, help="how many me_files to generate")
@click.option("--seed", type=int, default=None, help="random seed of the generated data")
@click.option("--keep", is_flag=True, help="keep the throwaway cluster running until Ctrl+C")
@click.option("--dsn", "demo_dsn", metavar="DSN",
              help="run on this (empty) database instead of a private throwaway cluster")
def demo(me_files, seed, keep, demo_dsn) -> None:
    """Run the whole pgsnap story on generated data, in a private throwaway PostgreSQL."""
    if demo_dsn is not None:
        story.run(resolve_dsn(demo_dsn, application_name=NAME), me_files=me_files, seed=seed)
        return
    click.echo("starting a throwaway PostgreSQL 15 cluster ...", err=True)
    with EmbeddedCluster() as pg:
        story.run(resolve_dsn(pg.dsn(), application_name=NAME), me_files=me_files, seed=seed)
        if keep:
            click.echo(f"the cluster keeps running: psql \"{pg.dsn()}\"; press Ctrl+C to stop it", err=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    click.echo("throwaway cluster stopped and removed", err=True)
