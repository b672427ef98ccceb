"""ncf-status: one screen with the state of a run, read from its run directory.

It only reads: the run directory belongs to the two Jobs, and a person watching a run
must never be able to disturb it.
"""
