"""CLI: explain — why a me_file is in a band of a target, or in none (for support staff).

`pgsnap explain ME_FILE_ID TARGET_ID` prints `pgsnap.explain()` band by band, in the rule's
order (tier): each trait group, satisfied or not and through which of the me_file's tags; the
band the membership rule picks and why; the snapshot that band's row would carry; whether the
stored row agrees; and whether the target is stale (`pgsnap.stale_targets()`). Both are read in
one snapshot of the database (a read-only REPEATABLE READ transaction). `--json`: the same as
one JSON object.

Exit 0 when the stored row is what the rule says (for a not_populated target, which pgsnap does
not maintain: when there is no row), 1 when it is not (a finding, like `verify`'s
differences), 2 when it cannot run (`error: P0002: me_file 9 does not exist`).
"""

from __future__ import annotations

import json
from typing import Any

import click
import psycopg
from psycopg.rows import namedtuple_row

from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import echo_json, finish, json_option, jsonable, plural, table, utc
from pgsnap.errors import Exit

EXPLAIN = ("SELECT tier, target_band_id, band_title, is_bullseye, n_groups, trait_group_id, group_title,"
           "       group_satisfied, via, band_satisfied, picked, reason, snapshot, stored_band,"
           "       stored_snapshot, agrees"
           "  FROM pgsnap.explain(%s, %s)")
TARGET = ("SELECT t.title, t.population_status, s.stale_since, s.kind, s.reason"
          "  FROM public.targets t LEFT JOIN pgsnap.stale_targets() s ON s.target_id = t.id"
          " WHERE t.id = %s")
MAINTAINED = ("populating", "populated")


def read(conn: psycopg.Connection, me_file_id: int, target_id: int) -> dict[str, Any]:
    """The explanation as plain data (what `--json` prints, times in ISO 8601)."""
    with conn.transaction(), conn.cursor(row_factory=namedtuple_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        found = cur.execute(EXPLAIN, [me_file_id, target_id]).fetchall()  # not found: P0002, exit 2
        target = cur.execute(TARGET, [target_id]).fetchone()
    bands: dict[int, dict[str, Any]] = {}
    for r in found:
        band = bands.setdefault(r.target_band_id, {
            "tier": r.tier, "band_id": r.target_band_id, "title": r.band_title, "is_bullseye": r.is_bullseye,
            "n_groups": r.n_groups, "satisfied": r.band_satisfied, "picked": r.picked, "reason": r.reason,
            "groups": []})
        if r.trait_group_id is not None:
            band["groups"].append({
                "group_id": r.trait_group_id, "title": r.group_title, "satisfied": r.group_satisfied,
                "via": [{"trait_id": t, "trait_name": n, "tag_value": v} for t, n, v in r.via or ()]})
    pick = next((b for b in bands.values() if b["picked"]), None)
    first = found[0] if found else None  # the snapshot, stored and agrees columns are on every row
    return {
        "me_file_id": me_file_id,
        "target": {"target_id": target_id, "title": target.title, "status": target.population_status,
                   "stale": {"since": target.stale_since, "kind": target.kind, "reason": target.reason}
                   if target.stale_since else None},
        "bands": list(bands.values()),
        "rule": {"band_id": pick["band_id"] if pick else None,
                 "reason": pick["reason"] if pick else
                 "no band: the target has no bands" if not bands else
                 "no band: none of the target's bands is satisfied",
                 "snapshot": first.snapshot if first else None},
        "stored": {"band_id": first.stored_band if first else None,
                   "snapshot": first.stored_snapshot if first else None},
        "agrees": first.agrees if first else True,  # a target without bands can hold no row
    }


def is_finding(report: dict[str, Any]) -> bool:
    """The stored row is not what pgsnap should keep: for a maintained target, not what the rule
    says; for a not_populated one, any row at all (as `verify` sees it)."""
    if report["target"]["status"] in MAINTAINED:
        return not report["agrees"]
    return report["stored"]["band_id"] is not None


# -- text ------------------------------------------------------------------------------------------
def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _named(kind: str, id_: int, title: str | None) -> str:
    return f"{kind} {id_}" if title is None else f"{kind} {id_} {_quoted(title)}"


def _tag(via: dict[str, Any]) -> str:
    value = "(no value)" if via["tag_value"] is None else f"= {_quoted(via['tag_value'])}"
    return f"{_named('trait', via['trait_id'], via['trait_name'])} {value}"


def _band_lines(bands: list[dict[str, Any]]) -> list[str]:
    groups = table([(_named("group", g["group_id"], g["title"]),
                     "satisfied by " + ", ".join(_tag(v) for v in g["via"]) if g["satisfied"] else
                     "not satisfied")
                    for b in bands for g in b["groups"]] or [("",)], indent="  ")
    lines = []
    for band in bands:
        traits = ", ".join(["bullseye"] * band["is_bullseye"] + [plural(band["n_groups"], "group")])
        lines.append(f"tier {band['tier']}  {_named('band', band['band_id'], band['title'])}"
                     f" ({traits}): {band['reason']}")
        lines += [groups.pop(0) for _ in band["groups"]]
    return lines


def _snapshot(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stored_text(report: dict[str, Any]) -> tuple[str, str | None]:
    """What the stored row says, and the command that repairs it (None: nothing to repair)."""
    rule, stored, target = report["rule"], report["stored"], report["target"]
    me_file_id, target_id = report["me_file_id"], target["target_id"]
    row = "no row" if stored["band_id"] is None else f"band {stored['band_id']}"
    if target["status"] not in MAINTAINED:
        why = f"the target is {target['status']}: pgsnap keeps no rows for it"
        if stored["band_id"] is None:
            return f"{row} ({why}; `pgsnap populate {target_id}` would)", None
        return f"{row} {_snapshot(stored['snapshot'])}: {why}", f"pgsnap populate {target_id}"
    if report["agrees"]:
        return (f"{row}: agrees" if stored["band_id"] is None else f"{row}, the same snapshot: agrees"), None
    if stored["band_id"] is None:
        what = f"{row}: disagrees: the row is missing"
    elif rule["band_id"] is None:
        what = f"{row} {_snapshot(stored['snapshot'])}: disagrees: the rule puts the me_file in no band"
    elif rule["band_id"] != stored["band_id"]:
        what = f"{row} {_snapshot(stored['snapshot'])}: disagrees: the rule says band {rule['band_id']}"
    else:
        what = f"{row} {_snapshot(stored['snapshot'])}: disagrees: the snapshot differs"
    if target["stale"]:
        return what, "pgsnap populate --stale (re-populates every stale target)"
    return what, f"pgsnap sync {me_file_id} (this me_file), pgsnap verify {target_id} (the whole target)"


def render(report: dict[str, Any]) -> list[str]:
    target, rule = report["target"], report["rule"]
    stale = target["stale"]
    state = (f"stale since {utc(stale['since'])} UTC ({stale['kind']}: {stale['reason']})" if stale
             else "not stale")
    lines = [f"me_file {report['me_file_id']} in {_named('target', target['target_id'], target['title'])}:"
             f" {target['status']}, {state}"]
    if report["bands"]:
        lines += ["", *_band_lines(report["bands"])]
    pick = next((b for b in report["bands"] if b["picked"]), None)
    stored, repair = _stored_text(report)
    summary = [("rule", _named("band", pick["band_id"], pick["title"]) if pick else rule["reason"]),
               ("snapshot", "-" if rule["snapshot"] is None else _snapshot(rule["snapshot"])),
               ("stored", stored)]
    if repair:
        summary.append(("to fix", repair))
    return [*lines, "", *table(summary)]


@click.command()
@click.argument("me_file_id", type=int)
@click.argument("target_id", type=int)
@json_option
@pass_app
def explain(app: App, me_file_id: int, target_id: int, as_json: bool) -> None:
    """Why a me_file is in a band of a target, or in none; exit 1 if its stored row disagrees."""
    conn = app.connect()
    report = read(conn, me_file_id, target_id)
    if as_json:
        echo_json(jsonable(report))
    else:
        click.echo("\n".join(render(report)))
    finish(Exit.FINDING if is_finding(report) else 0)
