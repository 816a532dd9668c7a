#!/usr/bin/env bash
# The action's install step: hepinfra from the action's own files, its dependencies pinned and
# hash-checked (ci/action-requirements.txt, made with `uv pip compile --generate-hashes --universal`),
# in a virtual environment under $RUNNER_TEMP, never in or from the checked-out repository.
# Inputs come from the environment only: ACTION_PATH (github.action_path), RUNNER_TEMP.
set -euo pipefail
: "${ACTION_PATH:?}" "${RUNNER_TEMP:?}"
venv="$RUNNER_TEMP/hepinfra-action"
lock="$ACTION_PATH/ci/action-requirements.txt"
stamp="$(cat "$lock" "$ACTION_PATH/pyproject.toml" | sha256sum | cut -c1-64)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0  # installed by an earlier step of this job
fi
rm -rf "$venv"
cd "$RUNNER_TEMP"  # not the checkout: nothing of it on sys.path while installing
python3 -I -m venv "$venv"
"$venv/bin/python" -I -m pip install --quiet --disable-pip-version-check --no-input \
  --require-hashes --only-binary :all: --no-deps -r "$lock"
site="$("$venv/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$ACTION_PATH" > "$site/hepinfra-action.pth"  # hepinfra itself: the action's files
"$venv/bin/python" -I -m hepinfra --version
printf '%s\n' "$stamp" > "$venv/.stamp"
