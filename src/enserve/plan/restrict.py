"""A profile restricted to one choice of fused groups.

A profile written by `enserve profile --fusion ...` lists each fused group as one more
member (with `covers` and `fusion_kind`) next to the members it covers; the planner plans
one choice at a time, in which each chosen group replaces its members.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from enserve.errors import PlanError
from enserve.formats.groups import GroupRef, as_kind, parse_group_name
from enserve.formats.profile import Profile

MAX_COMBINATIONS = 64


def profile_groups(profile: Profile) -> dict[str, GroupRef]:
    """The fused groups a profile carries (members with `covers`, or a group name)."""
    real = {m.name for m in profile.members if not _covers(m)}
    out: dict[str, GroupRef] = {}
    for m in profile.members:
        covers = _covers(m)
        ref = parse_group_name(m.name)
        if covers:
            text = str(getattr(m, "fusion_kind", None) or (ref.kind if ref else "fx"))
            kind = as_kind(text)
            if kind is None:
                raise PlanError(f"profile: fused group '{m.name}' has an unknown fusion_kind "
                                f"'{text}'")
            ref = GroupRef(m.name, kind, tuple(covers))
        if ref is None:
            continue
        unknown = sorted(set(ref.covers) - real)
        if unknown:
            raise PlanError(f"profile: fused group '{ref.name}' covers unknown member(s) "
                            f"{', '.join(unknown)}")
        out[ref.name] = ref
    return out


def lists_groups_with_members(profile: Profile) -> bool:
    """True when a fused group appears next to all the members it covers (the raw output of
    `enserve profile`), as opposed to a profile already restricted to one fusion choice."""
    present = {m.name for m in profile.members}
    return any(set(c) <= present for c in map(_covers, profile.members) if c)


def _covers(member: Any) -> list[str]:
    extra = getattr(member, "model_extra", None) or {}
    covers = extra.get("covers")
    return [str(c) for c in covers] if isinstance(covers, list) else []


def restrict_profile(profile: Profile, groups: Iterable[str]) -> Profile:
    """The profile as the planner should see it when exactly `groups` are used: each group
    replaces the members it covers (in the position of its first member); every other
    fused group is dropped. `groups=()` gives the unfused profile."""
    known = profile_groups(profile)
    chosen = [known[g] for g in groups]
    covered: dict[str, str] = {}
    for g in chosen:
        for name in g.covers:
            if name in covered:
                raise PlanError(f"fused groups '{covered[name]}' and '{g.name}' both cover "
                                f"'{name}'")
            covered[name] = g.name
    keep: list[str] = []
    for pm in profile.members:
        if pm.name in known:
            continue
        target = covered.get(pm.name, pm.name)
        if target not in keep:
            keep.append(target)
    by_name = {m.name: m for m in profile.members}
    members = [by_name[n] for n in keep]
    kept = set(keep)
    entries = [e for e in profile.entries if e.member in kept]
    return profile.model_copy(update={"members": members, "entries": entries})


def disjoint_combinations(groups: Sequence[GroupRef], limit: int = MAX_COMBINATIONS
                          ) -> list[tuple[str, ...]]:
    """Non-empty sets of groups that cover no member twice (largest first, at most `limit`)."""
    found: list[tuple[str, ...]] = []
    for size in range(len(groups), 0, -1):
        for combo in itertools.combinations(groups, size):
            members = [m for g in combo for m in g.covers]
            if len(members) == len(set(members)):
                found.append(tuple(g.name for g in combo))
                if len(found) >= limit:
                    return found
    return found
