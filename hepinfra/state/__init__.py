"""State: what hepinfra manages, per environment, with no secret in it.

``model`` (values), ``codec`` (bytes only), ``backend`` (protocols), ``local`` (the default
backend on disk), ``conformance`` (the suite every backend must pass).
"""
