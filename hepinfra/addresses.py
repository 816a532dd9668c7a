"""Resource addresses as the commands take them (``--rotate`` and ``--target``): ``ENV/KIND.KEY``,
``KIND.KEY`` or a database's ``KEY`` (every selected environment), checked against the manifest.

Owns: the one parser of those addresses (``parse``), and what ``--rotate`` and ``--target`` make of
it (``rotate_request``, ``target_request``).
Must not: call hep.gg, or read anything but the manifest and (``--target`` naming a resource the
manifest no longer declares) the state it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hepinfra.errors import UsageError
from hepinfra.values import RotateRequest, TargetRequest, clip, ref_of, split_ref

# (env, kind, key) -> whether the address names something besides the manifest's declarations
Known = Callable[[str, str, str], bool]


def parse(
    manifest: Any, envs: Sequence[str], addresses: Sequence[str], option: str, also: Known | None = None
) -> frozenset[tuple[str | None, str]]:
    """(env or None for every selected one, resource ref) per address; one clear UsageError for an
    address whose environment is not selected or that names nothing declared (nor ``also`` known)."""
    found: set[tuple[str | None, str]] = set()
    for address in addresses:
        env: str | None = None
        rest = address
        if "/" in address:
            env, rest = address.split("/", 1)
            if env not in envs:
                raise UsageError(
                    f"{option} {clip(address)}: environment '{clip(env)}' is not selected (selected: {', '.join(envs)})"
                )
        kind, key = split_ref(rest)
        scope = [env] if env else list(envs)
        declared = any(d.kind == kind and d.key == key for e in scope for d in manifest.declared[e])
        if not declared and not (also is not None and any(also(e, kind, key) for e in scope)):
            where = f"environment {env}" if env else "the selected environments"
            held = (" nor held in its state" if env else " nor held in their state") if also is not None else ""
            raise UsageError(
                f"{option} {clip(address)}: no {kind.removesuffix('s')} '{clip(key)}' is declared in {where}{held}"
            )
        found.add((env, ref_of(kind, key)))
    return frozenset(found)


def rotate_request(manifest: Any, envs: Sequence[str], addresses: Sequence[str]) -> RotateRequest:
    """``--rotate``: only declared resources (a rotation needs a declaration)."""
    return RotateRequest(parse(manifest, envs, addresses, "--rotate"))


def target_request(
    manifest: Any,
    envs: Sequence[str],
    addresses: Sequence[str],
    held: Callable[[str], Any] | None = None,
    rotate: RotateRequest | None = None,
) -> TargetRequest:
    """``--target``: declared resources, or (``held(env)``: the environment's state, read only when an
    address is not declared) one state still holds, so that its forget can be targeted. A rotation
    (``rotate``) of a resource the targets leave out is refused: it would silently not happen."""
    if not addresses:
        return TargetRequest()
    states: dict[str, Any] = {}

    def in_state(env: str, kind: str, key: str) -> bool:
        if held is None:
            return False
        if env not in states:
            states[env] = held(env)
        return states[env] is not None and key in getattr(states[env], kind)

    found = TargetRequest(parse(manifest, envs, addresses, "--target", in_state), tuple(dict.fromkeys(addresses)))
    for env, ref in sorted(rotate.targets if rotate else (), key=str):
        left = [e for e in ([env] if env else envs) if not found.wants(e, ref)]
        if left:
            kind, key = split_ref(ref)
            raise UsageError(
                f"--rotate {left[0]}/{kind}.{clip(key)}: the --target addresses leave it out; target it too"
            )
    return found
