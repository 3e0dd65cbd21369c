"""Signed over-the-air updates: Uptane-style repositories on TUF, gated releases, rollouts, deltas."""
