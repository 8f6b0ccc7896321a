"""The run directory: the one owner of its layout (directory.py), its event files
(events.py) and a `distlab run` child process (child.py). No torch."""
