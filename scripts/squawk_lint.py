#!/usr/bin/env python3
"""squawk over the migrations, every accepted finding explained (`make lint`; tests/test_static.py).

Runs squawk (the `squawk-cli` package, pinned in setup.cfg) with `.squawk.toml`, then matches
each finding against that file's `[[pgsnap_allow]]` entries (file glob, rule, optional 1-based
lines, why, optional open question). Fails on a finding no entry explains and on an entry that
matches nothing any more; prints the entries still marked `open`.

    scripts/squawk_lint.py [FILE ...]      default: migrations/*.sql
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".squawk.toml"


@dataclass(frozen=True)
class Finding:
    file: str  # repo-relative
    line: int  # 1-based
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"


@dataclass
class Allow:
    file: str
    rule: str
    why: str
    lines: list[int] | None = None
    open: str | None = None
    used: int = field(default=0, compare=False)

    def matches(self, f: Finding) -> bool:
        return (fnmatchcase(f.file, self.file) and f.rule == self.rule
                and (self.lines is None or f.line in self.lines))

    def __str__(self) -> str:
        where = self.file
        if self.lines:
            where += (" line " if len(self.lines) == 1 else " lines ") + ", ".join(map(str, self.lines))
        return f"{where}: {self.rule}"


@dataclass
class Report:
    findings: list[Finding]
    unexplained: list[Finding]
    stale: list[Allow]
    open: list[Allow]

    @property
    def ok(self) -> bool:
        return not self.unexplained and not self.stale


def squawk_binary() -> str:
    """squawk next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return str(beside)
    found = shutil.which("squawk")
    if not found:
        raise SystemExit("squawk not found: run `make setup` (squawk-cli is in the test extra of setup.cfg)")
    return found


def load_allow(config: Path = CONFIG) -> list[Allow]:
    with config.open("rb") as f:
        entries = tomllib.load(f).get("pgsnap_allow", [])
    allow = []
    for e in entries:
        if not e.get("why", "").strip():
            raise SystemExit(f"{config.name}: every [[pgsnap_allow]] needs a why: {e}")
        allow.append(Allow(file=e["file"], rule=e["rule"], why=e["why"], lines=e.get("lines"),
                           open=e.get("open")))
    return allow


def run_squawk(files: list[Path], config: Path = CONFIG) -> list[Finding]:
    rel = [str(p.resolve().relative_to(ROOT)) for p in files]
    proc = subprocess.run([squawk_binary(), "--config", str(config), "--reporter", "json", *rel],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode not in (0, 1) or not proc.stdout.strip().startswith("["):
        raise SystemExit(f"squawk failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return [Finding(d["file"], d["line"] + 1, d["rule_name"], d["message"]) for d in json.loads(proc.stdout)]


def lint(files: list[Path] | None = None, config: Path = CONFIG) -> Report:
    files = files or sorted((ROOT / "migrations").glob("*.sql"))
    allow = load_allow(config)
    findings = run_squawk(files, config)
    unexplained = []
    for f in findings:
        hits = [a for a in allow if a.matches(f)]
        for a in hits:
            a.used += 1
        if not hits:
            unexplained.append(f)
    stale = [a for a in allow if not a.used]
    return Report(findings, unexplained, stale, [a for a in allow if a.open and a.used])


def main(argv: list[str]) -> int:
    report = lint([Path(a) for a in argv] or None)
    for a in report.open:
        print(f"squawk: open: {a}: {a.open}")
    for f in report.unexplained:
        print(f"squawk: {f}\n    fix the migration, or explain it in .squawk.toml ([[pgsnap_allow]])")
    for a in report.stale:
        print(f"squawk: stale [[pgsnap_allow]] entry, matches no finding: {a}")
    print(f"squawk: {len(report.findings)} findings, {len(report.unexplained)} unexplained, "
          f"{len(report.stale)} stale exceptions, {len(report.open)} open")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
