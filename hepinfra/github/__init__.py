"""GitHub Actions: the ``hepinfra github`` commands behind the repository's ``action.yml`` (one
plan comment per pull request, apply on merge of the reviewed change set, drift issues), the REST
client they use, and value masking for ``output`` and ``run`` (``::add-mask::``).

Owns: GitHub's side only; plans and applies go through ``runner`` like any command.
Must not: run code from the checked-out repository, or send a value to GitHub unmasked.
"""
