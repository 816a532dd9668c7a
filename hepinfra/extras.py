"""Optional libraries: which extra of hepinfra a missing one comes with, said in one line.

Owns: the table of optional modules (boto3 and botocore, psycopg, pymysql, pyrage) and the
packages that install them; ``require`` (import one, or raise ``MissingExtraError``) and
``missing`` (the same sentence, offline, without importing: ``validate`` and the manifest's
checks). Every optional import of hepinfra goes through one of the two, so a missing library is
always ``<who> needs boto3, which is not installed: pip install 'hepinfra[s3]'``, never an
internal error.
Must not: import anything of hepinfra above ``errors`` (state, outputs and verify use it).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from hepinfra.errors import HepinfraError

# top-level module -> the distribution that provides it (as pip names it)
PACKAGES = {"boto3": "boto3", "botocore": "boto3", "psycopg": "psycopg", "pymysql": "PyMySQL", "pyrage": "pyrage"}


class MissingExtraError(HepinfraError):
    """An optional library is not installed (or cannot be loaded); the message names the extra."""


def needs(who: str, module: str, extra: str, *, cause: str = "") -> str:
    """``<who> needs <package>, which is not installed: pip install 'hepinfra[<extra>]'``."""
    package = PACKAGES.get(module.partition(".")[0], module)
    state = f"which cannot be loaded ({cause})" if cause else "which is not installed"
    return f"{who} needs {package}, {state}: pip install 'hepinfra[{extra}]'"


def missing(module: str, who: str, extra: str) -> str | None:
    """The ``needs`` sentence when ``module`` cannot be found, else None; nothing is imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken parent package
        found = False
    return None if found else needs(who, module, extra)


def require(module: str, who: str, extra: str) -> ModuleType:
    """``import module``; MissingExtraError (one line naming the extra) when it cannot be."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        if exc.name is not None and exc.name.partition(".")[0] not in (top, PACKAGES.get(top)):
            # the library is there, one of its own dependencies is not
            raise MissingExtraError(needs(who, module, extra, cause=f"it needs {exc.name}")) from None
        raise MissingExtraError(needs(who, module, extra)) from None
    except ImportError as exc:  # installed but broken (psycopg without libpq, a wheel of another platform)
        from hepinfra.safety.redact import redact

        cause = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
        raise MissingExtraError(needs(who, module, extra, cause=cause)) from None
