"""`leadflow policy`: check, show, diff, diagram and test the shared lead definition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from streams.cli.common import (
    PolicyOpt,
    PresetOpt,
    err,
    out,
)
from streams.cli.common import fail as _fail
from streams.cli.reading import (
    named_policy,
    policy_of,
)

policy_app = typer.Typer(no_args_is_help=True, help="The shared lead definition.")


def policy_check(
    file: Annotated[Path | None, typer.Argument(dir_okay=False)] = None,
    preset: PresetOpt = None,
) -> None:
    """Validate a policy; print its version and warnings."""
    rules = policy_of(file, preset)
    out.print(f"{file or rules.name}: ok, version {rules.version}", highlight=False)
    for name in rules.unknown_event_types():
        err.print(f"warning: event type {name!r} is not a known type (typo?)")


def policy_show(
    file: Annotated[Path | None, typer.Argument(dir_okay=False)] = None,
    preset: PresetOpt = None,
) -> None:
    """Print the validated policy (every default filled in) and its version."""
    rules = policy_of(file, preset)
    out.print(f"# version {rules.version}", highlight=False)
    out.print(rules.to_yaml(), highlight=False, markup=False)


def policy_diff(a: str, b: str) -> None:
    """Rule-by-rule differences between two policies (files or presets)."""
    from lifecycle.policy import policy_changes

    pa, pb = named_policy(a), named_policy(b)
    out.print(f"{a} ({pa.version}) → {b} ({pb.version})", highlight=False)
    changed = policy_changes(pa, pb)
    for key, va, vb in changed:
        if isinstance(va, list) and isinstance(vb, list):
            added = [x for x in vb if x not in va]
            removed = [x for x in va if x not in vb]
            parts = [f"+{x}" for x in added] + [f"-{x}" for x in removed]
            out.print(f"  {key}: {' '.join(map(str, parts)) or '(order only)'}", highlight=False)
        else:
            out.print(f"  {key}: {json.dumps(va)} → {json.dumps(vb)}", highlight=False)
    if not changed:
        out.print("  identical rules")


def policy_diagram() -> None:
    """The lifecycle as a mermaid state diagram, drawn from the transitions machine."""
    from lifecycle.machine import diagram

    print(diagram())


def policy_test(
    path: Annotated[Path, typer.Argument(help="a fixture file or a directory of them")],
    policy: PolicyOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Run golden fixtures (events → expected stages per person) against a policy."""
    from lifecycle.policytest import FixtureError, run_fixture

    files = sorted(path.glob("*.y*ml")) + sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise _fail(f"{path}: no fixture files (*.yaml, *.yml, *.json)")
    failed = total = 0
    for file in files:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise _fail(f"{file}: {error}") from None
        if policy is None and preset is None and isinstance(data, dict) and data.get("policy"):
            named = str(data["policy"])
            relative = file.parent / named
            rules = named_policy(str(relative) if relative.is_file() else named)
        else:
            rules = policy_of(policy, preset)
        try:
            results = run_fixture(data, rules)
        except FixtureError as error:
            raise _fail(f"{file}: {error}") from None
        for result in results:
            total += 1
            if result.passed:
                out.print(f"[green]PASS[/green] {file.name}: {result.name}", highlight=False)
                continue
            failed += 1
            out.print(f"[red]FAIL[/red] {file.name}: {result.name}", highlight=False)
            for person, want in result.expected.items():
                got = result.actual.get(person, [])
                if got != want:
                    out.print(f"    {person}: expected {want}, got {got}", highlight=False)
                    for why in result.reasons.get(person, []):
                        out.print(f"      · {why}", highlight=False, markup=False)
    out.print(f"{total - failed}/{total} cases pass under {rules.name} ({rules.version})")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `policy` command group to the `leadflow` app."""
    policy_app.command("check")(policy_check)
    policy_app.command("show")(policy_show)
    policy_app.command("diff")(policy_diff)
    policy_app.command("diagram")(policy_diagram)
    policy_app.command("test")(policy_test)
    app.add_typer(policy_app, name="policy")
