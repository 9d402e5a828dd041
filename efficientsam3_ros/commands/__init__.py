"""Subcommands of the ``efficientsam3`` CLI that front the modeling and pipeline layers."""
