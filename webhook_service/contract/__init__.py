"""The published event contract: what a subscriber can rely on.

Every event type the service can emit (FreshBooks-derived and operational), its JSON Schema and
example, the type patterns and payload filters a subscription chooses events with, and the
builders of the operational events. Pure: no I/O, no storage, so every layer that changes state
(down to the token rotation) can describe the change in the contract's terms.
"""
