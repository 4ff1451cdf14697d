"""The guards named by the lifecycle machine: fit (ICP), UCP, decision maker, gating, score.

Each guard answers (passes, sentence). The sentences of passing guards make up the reason on
a stage change ("fits ICP; decision maker (vp); source webinar is not gated"); the sentence of
the first failing guard is the note on a blocked move ("UCP: industry education").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from events.inbound import Event
from lifecycle.policy import Policy


class GuardInput(NamedTuple):
    event: Event
    profile: Mapping[str, Any]
    policy: Policy
    stage: str
    score: float
    #: what the guards read of personal fields, in policy words, noted as they read it; kept
    #: in the history record (`outcomes`, see `lifecycle.shredding`)
    noted: dict[str, str]
    #: the outcomes a history record kept: used for a personal field the profile no longer
    #: holds (erased, or sealed with no key at hand)
    recorded: Mapping[str, str] | None = None


Verdict = tuple[bool, str | None]


def _text(profile: Mapping[str, Any], key: str) -> str | None:
    value = profile.get(key)
    return value.lower() if isinstance(value, str) and value else None


# The fit guards run on every interest action and hand-raise, most of which they block. They
# read the policy only through `compiled` (plain slots, no pydantic attribute lookups) and look
# a profile key up only when the policy has a list to check it against.


def not_ucp(g: GuardInput) -> Verdict:
    """Unacceptable customer profile: these contacts never reach lead or mql.

    What it reads of the email and the job title it notes in `g.noted` (in policy words), and
    where the profile no longer holds them it takes the verdict `g.recorded` kept."""
    c = g.policy.compiled
    profile, noted, recorded = g.profile, g.noted, g.recorded
    if c.ucp_domains:
        email = _text(profile, "email")
        if email is not None:
            noted["email"] = "given"
            if "@" in email:
                domain = email.rsplit("@", 1)[1]
                if domain in c.ucp_domains:
                    noted["ucp_domain"] = domain
                    return False, f"UCP: email domain {domain} is unacceptable"
        elif recorded is not None and "ucp_domain" in recorded:
            noted["ucp_domain"] = domain = recorded["ucp_domain"]
            return False, f"UCP: email domain {domain} is unacceptable"
    if c.ucp_industries:
        industry = _text(profile, "industry")
        if industry and industry in c.ucp_industries:
            return False, f"UCP: industry {industry} is unacceptable"
    if c.ucp_countries:
        country = _text(profile, "country")
        if country and country in c.ucp_countries:
            return False, f"UCP: country {country.upper()} is unacceptable"
    if c.ucp_titles:
        title = _text(profile, "job_title")
        if title is not None:
            noted["title"] = "given"
            for keyword in c.ucp_titles:
                if keyword in title:
                    noted["ucp_title"] = keyword
                    return False, f"UCP: job title {profile['job_title']!r} contains {keyword!r}"
        elif recorded is not None and "ucp_title" in recorded:
            noted["ucp_title"] = keyword = recorded["ucp_title"]
            return False, f"UCP: job title (withheld) contains {keyword!r}"
    return True, None


def fits_icp(g: GuardInput) -> Verdict:
    """Industry, country and company size inside the ICP; missing data per `unknown_passes`."""
    c = g.policy.compiled
    profile = g.profile
    checked = False
    if c.icp_industries:
        checked = True
        industry = _text(profile, "industry")
        if industry is None:
            if not c.icp_unknown_passes:
                return False, "industry unknown and this policy requires it"
        elif industry not in c.icp_industries:
            return False, f"industry {industry} is outside the ICP"
    if c.icp_countries:
        checked = True
        country = _text(profile, "country")
        if country is None:
            if not c.icp_unknown_passes:
                return False, "country unknown and this policy requires it"
        elif country not in c.icp_countries:
            return False, f"country {country.upper()} is outside the ICP"
    low, high = c.employees_min, c.employees_max
    if low is not None or high is not None:
        checked = True
        employees = profile.get("employees")
        if employees is None:
            if not c.icp_unknown_passes:
                return False, "company size unknown and this policy requires it"
        elif low is not None and employees < low:
            return False, f"{employees} employees is below the ICP minimum {low}"
        elif high is not None and employees > high:
            return False, f"{employees} employees is above the ICP maximum {high}"
    return True, ("fits ICP" if checked else "no ICP gate")


def is_decision_maker(g: GuardInput) -> Verdict:
    """A decision maker or influencer, by seniority or by a keyword in the job title."""
    c = g.policy.compiled
    if not c.dm_required:
        return True, None
    profile, noted, recorded = g.profile, g.noted, g.recorded
    seniority = _text(profile, "seniority")
    if seniority and seniority in c.dm_seniorities:
        return True, f"decision maker ({seniority})"
    title = _text(profile, "job_title")
    shown_title = repr(profile.get("job_title"))
    if title is not None:
        noted["title"] = "given"
        for keyword in c.dm_titles:
            if keyword in title:
                noted["dm_title"] = keyword
                return True, f"decision maker (title {profile['job_title']!r})"
    elif recorded is not None and "title" in recorded:
        noted["title"] = "given"
        if "dm_title" in recorded:
            noted["dm_title"] = recorded["dm_title"]
            return True, "decision maker (title withheld)"
        title, shown_title = "(withheld)", "job title (withheld)"
    if seniority is None and title is None:
        if c.dm_unknown_passes:
            return True, "role unknown"
        return False, "role unknown and this policy requires a decision maker"
    shown = seniority or shown_title
    return False, f"{shown} is not a decision maker or influencer"


def source_not_gated(g: GuardInput) -> Verdict:
    """Gated sources cannot make an mql; with `allowed_sources`, only those listed can."""
    c = g.policy.compiled
    source = g.event.source
    name = source.lower() if source else None
    if c.allowed is not None and (name is None or name not in c.allowed):
        if source is None:
            return False, "no source given and this policy only allows listed sources"
        return False, f"source {source} is not among the allowed sources"
    if name is not None and name in c.gated:
        return False, f"source {source} is gated"
    return True, f"source {source} is not gated"


def score_reached(g: GuardInput) -> Verdict:
    scoring = g.policy.scoring
    if scoring is None:
        return False, "this policy has no scoring"
    if g.score >= scoring.threshold:
        return True, f"score {g.score:.0f} reached the threshold {scoring.threshold:.0f}"
    return False, f"score {g.score:.0f} is below the threshold {scoring.threshold:.0f}"


def times_out(g: GuardInput) -> Verdict:
    if g.stage in g.policy.compiled.timeout_stages:
        return True, f"{g.stage} times out under policy {g.policy.name}"
    return False, f"{g.stage} does not time out under policy {g.policy.name}"


GUARDS: dict[str, Callable[[GuardInput], Verdict]] = {
    "not_ucp": not_ucp,
    "fits_icp": fits_icp,
    "is_decision_maker": is_decision_maker,
    "source_not_gated": source_not_gated,
    "score_reached": score_reached,
    "times_out": times_out,
}


def check(guards: tuple[str, ...], g: GuardInput) -> tuple[str | None, list[str]]:
    """Run guards in order: (name of the first failing guard or None, sentences so far)."""
    sentences: list[str] = []
    for name in guards:
        ok, sentence = GUARDS[name](g)
        if sentence:
            sentences.append(sentence)
        if not ok:
            return name, sentences
    return None, sentences
