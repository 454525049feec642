"""The fleet view: what a process publishes (snapshots and their schema), where it publishes,
and what readers collect from every process: budget, sessions, redaction.
"""
