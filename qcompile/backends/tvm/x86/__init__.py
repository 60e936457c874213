"""target="x86": the host CPU (backend.py) and its float yardstick."""
