"""Every variable hepinfra reads as a credential, and the environment a command it starts gets.

Owns: the one declared list of credential settings and the variables they name, and the minimal
environment of every child process (exec outputs' commands, their ``read:`` commands,
``after_rotate`` hooks).

``CREDENTIAL_SETTINGS`` names the manifest settings that decide where a credential is read from or
where one may go (``plan --base`` compares the environments' ones, ``ENVIRONMENT_SETTINGS``, with the
base's; the rest reach commands only at apply and are listed for review):

- ``db_key_env``, ``id_username_env``, ``id_token_env``, ``upload_token_env``: under
  ``environments.<env>``, the variables holding that environment's hep.gg credentials;
- ``state.url_env``: the variable holding the ``postgres`` state backend's libpq URL;
- ``pass_env``: under every ``exec`` output, the variables a command is given;
- ``after_rotate_pass_env``: under ``databases.<key>``, the variables its ``after_rotate`` hook is given;
- ``admin_url_env``: under every ``pgbouncer`` output, the variable holding PgBouncer's admin console
  URL (any output spec's ``credential_fields`` name such settings).

The variables (``credentials``): hepinfra's defaults (``HEPGG_DB_KEY``, ``HEPGG_DB_KEY_<ENV>`` of
every environment, ``HEPGG_ID_USERNAME``, ``HEPGG_ID_TOKEN``, ``HEPGG_UPLOAD_TOKEN``,
``HEPINFRA_STATE_KEY``, ``HEPINFRA_STATE_KEY_OLD``, ``HEPINFRA_STATE_PG``,
``HEPINFRA_LOCAL_POSTGRES``, ``HEPINFRA_LOCAL_MARIADB``), every variable the settings above name
(an output's as ``SECTION.KEY.outputs[I].FIELD``),
and with the ``postgres`` state backend libpq's ``PGPASSWORD``, ``PGPASSFILE`` and
``PGSERVICEFILE``. AWS's variables are not on it: boto3's default chain is shared with the user's
own tools (a command may need them, named in ``pass_env``).

A child's environment starts from ``CHILD_ALLOWED`` (``LC_*`` too) and adds what ``pass_env``
names; nothing else. ``PYTHONPATH`` is not on it (it would change what a Python command imports),
nor ``XDG_RUNTIME_DIR`` (it reaches the user's session bus and agents): ``pass_env`` may name
either. ``pass_env`` can never name a ``HEPGG_*`` or ``HEPINFRA_*`` variable or a credential.
Must not: read a credential's value (only names are handled here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

CREDENTIAL_SETTINGS = (
    "db_key_env",
    "id_username_env",
    "id_token_env",
    "upload_token_env",
    "state.url_env",
    "pass_env",
    "after_rotate_pass_env",
    "admin_url_env",
)
# environments.<env>.<setting> -> the variable read when the setting is absent (the first four of
# CREDENTIAL_SETTINGS: ENVIRONMENT_SETTINGS, for code that compares environments' specs)
ENV_SETTINGS = {
    "db_key_env": "HEPGG_DB_KEY",
    "id_username_env": "HEPGG_ID_USERNAME",
    "id_token_env": "HEPGG_ID_TOKEN",
    "upload_token_env": "HEPGG_UPLOAD_TOKEN",
}
ENVIRONMENT_SETTINGS = tuple(ENV_SETTINGS)
OWN_CREDENTIALS = (
    "HEPGG_DB_KEY",
    "HEPGG_ID_USERNAME",
    "HEPGG_ID_TOKEN",
    "HEPGG_UPLOAD_TOKEN",
    "HEPINFRA_STATE_KEY",
    "HEPINFRA_STATE_KEY_OLD",
    "HEPINFRA_STATE_PG",
    "HEPINFRA_LOCAL_POSTGRES",
    "HEPINFRA_LOCAL_MARIADB",
)
LIBPQ_CREDENTIALS = ("PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE")
OWN_PREFIXES = ("HEPGG_", "HEPINFRA_")  # hepinfra's own variables: never named in pass_env
# the CI runner's internals: ACTIONS_RUNTIME_TOKEN (caches, artifacts), ACTIONS_ID_TOKEN_REQUEST_* (mints
# OIDC tokens that clouds trust), GitLab's job JWTs. No command needs them; a job token a command needs
# (GITHUB_TOKEN, CI_JOB_TOKEN) is named in pass_env, which a plan shows for review
CI_PREFIXES = ("ACTIONS_", "CI_JOB_JWT")
# what ``hepinfra run`` withholds from the program besides the credentials
RUN_WITHHELD_PREFIXES = ("HEPGG_", "HEPINFRA_STATE_", "HEPINFRA_LOCAL_")

_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
_CA_BUNDLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
CHILD_ALLOWED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR", "TERM", *_CA_BUNDLES}
    | set(_PROXIES)
    | {p.lower() for p in _PROXIES}
)
CHILD_ALLOWED_PREFIXES = ("LC_",)


def db_key_default(env: str) -> str:
    """``HEPGG_DB_KEY_<ENV>``: the environment's name upper-cased, non-alphanumerics as ``_``."""
    return f"HEPGG_DB_KEY_{re.sub(r'[^A-Za-z0-9]', '_', env).upper()}"


def _model(manifest: Any) -> Any:
    """A loaded ``Manifest`` or its ``ManifestModel``."""
    return getattr(manifest, "model", manifest)


def credential_sources(manifest: Any) -> dict[str, str]:
    """Every variable hepinfra reads as a credential for ``manifest`` (a ``Manifest`` or a
    ``ManifestModel``) -> where it comes from (``hepinfra's own``, ``environments.prod.db_key_env``,
    ``state.url_env``, ``the postgres state backend (libpq)``)."""
    model = _model(manifest)
    found: dict[str, str] = dict.fromkeys(OWN_CREDENTIALS, "hepinfra's own")
    for env, spec in model.environments.items():
        found.setdefault(db_key_default(env), "hepinfra's own")
        for setting in ENV_SETTINGS:
            name = getattr(spec, setting, None)
            if name:
                found.setdefault(name, f"environments.{env}.{setting}")
    state = model.state
    if getattr(state, "backend", None) == "postgres":
        found.setdefault(state.url_env, "state.url_env")
        for name in LIBPQ_CREDENTIALS:
            found.setdefault(name, "the postgres state backend (libpq)")
    for label, name in _output_credentials(model):
        found.setdefault(name, label)
    return found


def _output_credentials(model: Any) -> Iterable[tuple[str, str]]:
    """(where, variable) for every output setting that names a credential variable (an output spec's
    ``credential_fields``: a pgbouncer output's ``admin_url_env``), in every resource section."""
    for section in type(model).model_fields:
        resources = getattr(model, section, None)
        if not isinstance(resources, dict):
            continue
        for key, resource in resources.items():
            for i, output in enumerate(getattr(resource, "outputs", None) or ()):
                for field in getattr(output, "credential_fields", ()):
                    name = getattr(output, field, None)
                    if isinstance(name, str) and name:
                        yield f"{section}.{key}.outputs[{i}].{field}", name


def credentials(manifest: Any) -> frozenset[str]:
    """The names of ``credential_sources``."""
    return frozenset(credential_sources(manifest))


def refused_pass_env(name: str, sources: Mapping[str, str], field: str = "pass_env") -> str | None:
    """Why ``pass_env`` (or ``after_rotate_pass_env``: ``field``) cannot name ``name``, or None."""
    if sources.get(name) == "hepinfra's own" or name.startswith("HEPGG_DB_KEY_"):
        return f"{field}: {name} is hepinfra's own credential; a command never receives it"
    if name in sources:
        return f"{field}: {name} is a credential hepinfra reads ({sources[name]}); a command never receives it"
    if name.startswith(OWN_PREFIXES):
        return f"{field}: {name} is hepinfra's own variable (HEPGG_*, HEPINFRA_*); a command never receives it"
    if name.startswith(CI_PREFIXES):
        return f"{field}: {name} is the CI runner's own (ACTIONS_*, CI_JOB_JWT*); a command never receives it"
    return None


def child_environment(
    pass_env: Iterable[str],
    environ: Mapping[str, str],
    *,
    withheld: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a command hepinfra starts: the allow-list, plus what ``pass_env`` names,
    plus ``extra`` (hepinfra's own ``HEPINFRA_ENV``...). ``withheld`` (the manifest's credentials)
    and ``HEPGG_*``/``HEPINFRA_*`` never pass, whatever ``pass_env`` says."""
    drop = set(withheld)
    wanted = set(pass_env)
    out = {
        k: v
        for k, v in environ.items()
        if (k in CHILD_ALLOWED or k.startswith(CHILD_ALLOWED_PREFIXES) or k in wanted)
        and k not in drop
        and not k.startswith(OWN_PREFIXES)
    }
    out.update(extra or {})
    return out


def run_environment(manifest: Any, environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """``hepinfra run``'s program environment: the user's, minus hepinfra's credentials and its
    ``HEPGG_*``, ``HEPINFRA_STATE_*`` and ``HEPINFRA_LOCAL_*`` variables, unless ``pass_env`` names one."""
    drop = credentials(manifest) if manifest is not None else frozenset(OWN_CREDENTIALS)
    wanted = set(pass_env)
    return {k: v for k, v in environ.items() if k in wanted or not (k in drop or k.startswith(RUN_WITHHELD_PREFIXES))}
