"""The engine: the guarded pool, its checkout ledger, acquire stacks, the checkout's context
and poolguard's own connection outside the pool.
"""
