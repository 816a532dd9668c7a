"""The containment boundary, in one place.

``paths``: every path a manifest names (outputs, template sources) is checked on its resolved
real path: inside the project unless allowed, not hepinfra's or Git's own files, not the
manifest or a template, no control characters, regular files only, size-capped reads.
``git``: which real paths Git tracks or would pick up.
``redact``: the per-run registry of secret values and the one redactor that every message
leaving the process passes (errors, events, logs, tracebacks).
"""
