"""The submitting side: the `qrun` command, the home server and the launchers."""
