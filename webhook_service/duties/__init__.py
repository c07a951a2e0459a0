"""The periodic duties a worker runs: callback sync, proactive token refresh, backfill sweeps,
retention. Each is held by one process at a time through a lease (:mod:`.holder`), so adding
workers adds hands for the inbox and the deliveries, never more FreshBooks traffic."""
