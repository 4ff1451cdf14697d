"""What an erasure withholds from whoever reads a person's lifecycle.

Reason sentences can quote a personal field (a job title, a seniority), so for an erased
person every reason keeps its rule id and loses its sentence; the stage facts, sequences and
rule ids stay, so history still verifies and analytics still count. The profile itself is
gone from the state at erasure (`lifecycle.evolve`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.outbound import Reason

#: The sentence shown in place of an erased person's reason.
WITHHELD = "withheld: the person was erased"


def withheld(reason: Reason | Mapping[str, Any]) -> dict[str, str]:
    """`reason` as an erased person's reader sees it: the rule id, and no sentence."""
    rule = reason["rule"] if isinstance(reason, Mapping) else reason.rule
    return {"rule": rule, "text": WITHHELD}
